"""Which database errors are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import random
import ssl

from sqlalchemy import exc

from .._errors import LoopsafeError

__all__ = (
    "backoff",
    "involves_loopsafe_error",
    "is_retryable_connect_error",
    "is_retryable_transaction_error",
    "sqlstate",
)

# SQLSTATEs of a connection that went away or could not be made right now: class 08 (connection
# exception), the server shutting down or starting up (57P01-57P03).
_CONNECTION_STATES = frozenset({"57P01", "57P02", "57P03"})
_CONCURRENCY_STATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
# Drivers whose own exceptions (not wrapped by SQLAlchemy, e.g. from a raw driver connection)
# still come from the database.
_DRIVER_PACKAGES = frozenset({"asyncpg", "psycopg"})

_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 2.0


def sqlstate(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind `error` (through SQLAlchemy's and the driver's wrappers)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for attribute in ("sqlstate", "pgcode"):
            code = getattr(current, attribute, None)
            if isinstance(code, str) and code:
                return code
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def involves_loopsafe_error(error: BaseException) -> bool:
    """True when `error`, or anything it wraps or was raised from, is a `LoopsafeError`.

    loopsafe's errors report decisions (an exhausted budget, a wrong-loop use, a missing
    configuration), never transient faults: trying again only repeats the wait. They are checked
    before any built-in base because those lie here: `PoolExhaustedError` is a `TimeoutError`,
    hence an `OSError`, and was retried as a refused connection (issue #20: an overloaded request
    waited ``connect_retries`` × ``pool_timeout`` plus backoff for its 503). A wrapper (SQLAlchemy's
    ``.orig``, ``raise ... from``, an error raised while handling one) does not launder it.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, LoopsafeError):
            return True
        orig = getattr(current, "orig", None)
        for linked in (current.__cause__, current.__context__, orig):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return False


def _from_database(error: BaseException) -> bool:
    # Only the type of the error itself decides: an application error that merely happened while
    # handling a database error (its __context__) is still the application's.
    if isinstance(error, exc.SQLAlchemyError):
        return True
    return type(error).__module__.partition(".")[0] in _DRIVER_PACKAGES


def _is_lost_connection(error: BaseException) -> bool:
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.DisconnectionError):
        return True
    code = sqlstate(error)
    return code is not None and (code.startswith("08") or code in _CONNECTION_STATES)


def is_retryable_transaction_error(error: BaseException) -> bool:
    """True when the database says re-running the transaction can succeed.

    That is a serialization failure (40001), a deadlock (40P01) or a lost connection (invalidated
    by SQLAlchemy, SQLSTATE class 08, 57P01-57P03), raised by SQLAlchemy or the driver. The
    application's own `TimeoutError`, `OSError` or `ConnectionError` never is, even when it was
    raised while a query was running, and neither is any `LoopsafeError`.
    """
    if involves_loopsafe_error(error) or not _from_database(error):
        return False
    return sqlstate(error) in _CONCURRENCY_STATES or _is_lost_connection(error)


def is_retryable_connect_error(error: BaseException) -> bool:
    """True when opening a connection failed in a way that may pass: server down, restarting,
    unreachable for now.

    Called only around the driver's connect, where a bare `OSError` (refused, reset, timed out,
    host not resolvable yet) can only come from the driver. Bad credentials, a missing database,
    a permission problem or a certificate that fails verification are not transient: retrying
    them only delays the error, and so does any `LoopsafeError` (an exhausted budget is an
    `OSError` by its bases, not a fault that passes).
    """
    if involves_loopsafe_error(error):
        return False
    if isinstance(error, OSError):
        return not isinstance(error, (PermissionError, ssl.SSLCertVerificationError))
    if not _from_database(error):
        return False
    if _is_lost_connection(error):
        return True
    # psycopg reports a server it could not reach as an OperationalError with no SQLSTATE; every
    # answer from a server (bad password, no such database) carries one.
    return isinstance(error, exc.OperationalError) and sqlstate(error) is None


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): exponential, capped, jittered."""
    delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)
