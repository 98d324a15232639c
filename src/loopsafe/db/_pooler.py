"""Driver settings: URL normalisation, application_name, and what PgBouncer's pool modes require."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

from .._errors import ConfigurationError
from ._sqlalchemy_compat import async_dialect_class

__all__ = (
    "AutocommitBehindPoolerError",
    "Pooler",
    "check_isolation_level",
    "driver_settings",
    "normalize_url",
    "refuse_autocommit",
)

Pooler = Literal["transaction", "session"]

_DRIVER_HINT = (
    "Use an asyncio driver, e.g. postgresql+asyncpg://… (what a bare postgresql:// means here) "
    "or postgresql+psycopg://…"
)


def normalize_url(url: str | URL) -> URL:
    """Parse `url`; a bare ``postgresql://`` / ``postgres://`` means asyncpg.

    Raises `ConfigurationError` (a `ValueError`) for text that is not a database URL or names a driver that is not async.
    """
    try:
        parsed = make_url(url)
    except Exception as error:  # SQLAlchemy's ArgumentError; never echo the URL (password)
        raise ConfigurationError(
            f"Not a database URL ({type(error).__name__}); expected something like "
            "postgresql://user:password@host:5432/dbname"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":  # Heroku/Supabase spelling, which SQLAlchemy no longer accepts
        backend = "postgresql"
    if backend == "postgresql" and not driver:
        driver = "asyncpg"
    parsed = parsed.set(drivername=f"{backend}+{driver}" if driver else backend)
    try:
        dialect = async_dialect_class(parsed)
    except Exception as error:
        raise ConfigurationError(
            f"SQLAlchemy cannot load the driver of {parsed.drivername!r}: {error}. {_DRIVER_HINT}"
        ) from None
    if not getattr(dialect, "is_async", False):
        raise ConfigurationError(f"{parsed.drivername!r} is not an asyncio driver. {_DRIVER_HINT}")
    return parsed


def _unique_statement_name() -> str:
    # Unique across every client of the pooler: asyncpg's default names (__asyncpg_stmt_1__ …)
    # collide when PgBouncer hands two clients the same server connection.
    return f"__loopsafe_{uuid.uuid4().hex}__"


def driver_settings(
    url: URL,
    *,
    pooler: Pooler | None,
    application_name: str,
    connect_args: Mapping[str, Any],
) -> tuple[URL, dict[str, Any]]:
    """The URL and connect arguments to create an engine with: the caller's, plus a default
    application_name and what the pooler mode requires.

    The caller's own values win, except that ``pooler="transaction"`` insists on the settings
    without which the driver fails behind a transaction pooler.
    Raises `ConfigurationError` (a `ValueError`) for a pooler mode the driver cannot honour.
    """
    args = dict(connect_args)
    driver = url.get_driver_name()
    query_has_name = "application_name" in url.query
    if driver == "asyncpg":
        settings = dict(args.get("server_settings") or {})
        if query_has_name:
            # asyncpg.connect() has no application_name argument: it is a server setting.
            settings.setdefault("application_name", url.query["application_name"])
            url = url.difference_update_query(["application_name"])
        settings.setdefault("application_name", application_name)
        args["server_settings"] = settings
        if pooler == "transaction":
            # asyncpg's own statement cache, SQLAlchemy's cache of prepared statements, and
            # the statement names: all three must not assume one client owns a server session.
            args["statement_cache_size"] = 0
            args["prepared_statement_cache_size"] = 0
            args["prepared_statement_name_func"] = _unique_statement_name
    elif driver in ("psycopg", "psycopg_async"):
        if not query_has_name:
            args.setdefault("application_name", application_name)
        if pooler == "transaction":
            # psycopg prepares a statement after 5 executions; None never prepares.
            args["prepare_threshold"] = None
    elif pooler == "transaction":
        raise ConfigurationError(
            f"pooler='transaction' knows how to configure asyncpg and psycopg, not {driver!r}; "
            "use one of those drivers, or pooler=None and configure the driver yourself."
        )
    return url, args


class AutocommitBehindPoolerError(ConfigurationError):
    """asyncpg under ``isolation_level="AUTOCOMMIT"`` was asked for behind a transaction pooler.

    asyncpg prepares a statement and executes it in two round trips; with no transaction open,
    PgBouncer may hand those round trips to two different server connections, and the execute
    fails with ``prepared statement "…" does not exist`` (sqlalchemy/sqlalchemy#12836: measured
    here on 91 of 200 sessions behind PgBouncer 1.18). Refused up front instead of failing in bursts.
    """


def _autocommit_refused() -> AutocommitBehindPoolerError:
    return AutocommitBehindPoolerError(
        "pooler='transaction' with the asyncpg driver cannot run under "
        "isolation_level='AUTOCOMMIT': asyncpg prepares each statement and executes it in a "
        "second round trip, and outside a transaction the pooler may send the two to different "
        "server connections ('prepared statement ... does not exist'). Use the psycopg driver "
        "(postgresql+psycopg://..., which runs a statement in one round trip), or drop "
        "AUTOCOMMIT so every session runs in a transaction."
    )


def _is_autocommit(level: object) -> bool:
    return isinstance(level, str) and level.upper().replace("_", " ") == "AUTOCOMMIT"


def _refuses_autocommit(url: URL, pooler: Pooler | None) -> bool:
    return pooler == "transaction" and url.get_driver_name() == "asyncpg"


def check_isolation_level(
    url: URL, pooler: Pooler | None, engine_options: Mapping[str, Any]
) -> None:
    """Raise `AutocommitBehindPoolerError` when `engine_options` ask asyncpg for AUTOCOMMIT
    behind a transaction pooler (``isolation_level`` or ``execution_options``)."""
    if not _refuses_autocommit(url, pooler):
        return
    execution_options = engine_options.get("execution_options") or {}
    if _is_autocommit(engine_options.get("isolation_level")) or _is_autocommit(
        execution_options.get("isolation_level")
    ):
        raise _autocommit_refused()


def refuse_autocommit(engine: Engine, url: URL, pooler: Pooler | None) -> None:
    """Make `engine` refuse AUTOCOMMIT asked for later, per connection or per engine copy
    (``conn.execution_options(isolation_level="AUTOCOMMIT")``,
    ``engine.execution_options(...)``, ``session.connection(execution_options=...)``), when
    `check_isolation_level` would refuse it at construction."""
    if not _refuses_autocommit(url, pooler):
        return

    def check(_target: object, options: Mapping[str, Any]) -> None:
        # Raised before SQLAlchemy applies the option: no statement ever runs under it.
        if _is_autocommit(options.get("isolation_level")):
            raise _autocommit_refused()

    event.listen(engine, "set_connection_execution_options", check)
    event.listen(engine, "set_engine_execution_options", check)
