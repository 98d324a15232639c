"""Which database errors are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import random

from sqlalchemy import exc

from .._errors import LoopsafeError

__all__ = ("backoff", "is_retryable_transaction_error", "is_transient_connection_error", "sqlstate")

# SQLSTATEs of a connection that went away or could not be made right now: class 08 (connection
# exception), the server shutting down or starting up (57P01-57P03).
_CONNECTION_STATES = frozenset({"57P01", "57P02", "57P03"})
_CONCURRENCY_STATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected

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


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return chain


def is_transient_connection_error(error: BaseException) -> bool:
    """True when `error` means the connection was lost or could not be opened *for now*.

    Bad credentials or a missing database are not transient: retrying them only delays the error.
    """
    if isinstance(error, LoopsafeError):
        # A wrong-loop use or an exhausted budget does not heal by trying again at once.
        return False
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.DisconnectionError):
        return True
    code = sqlstate(error)
    if code is not None:
        return code.startswith("08") or code in _CONNECTION_STATES
    for link in _chain(error):
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        if type(link).__name__ in ("ConnectionDoesNotExistError", "InterfaceError") and (
            "closed" in str(link) or "connection" in str(link).lower()
        ):
            return True
        if isinstance(link, OSError) and not isinstance(link, PermissionError):
            return True
    return False


def is_retryable_transaction_error(error: BaseException) -> bool:
    """True for a serialization failure, a deadlock, or a lost connection: re-running can succeed."""
    return sqlstate(error) in _CONCURRENCY_STATES or is_transient_connection_error(error)


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): exponential, capped, jittered."""
    delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)
