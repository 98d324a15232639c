"""The process's default Database, and module-level shortcuts that use it."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .._errors import DatabaseNotConfiguredError
from .._log import get_logger
from ._database import Database
from ._status import PoolStatus

__all__ = (
    "configure",
    "get_database",
    "get_engine",
    "pool_status",
    "run_in_transaction",
    "session",
    "session_maker",
)

T = TypeVar("T")

_log = get_logger("loopsafe.db")
_default: Database | None = None
_lock = threading.Lock()


def configure(url: str | URL | None = None, **options: Any) -> Database:
    """Create the default `Database` (``url`` defaults to ``$DATABASE_URL``) and return it.

    ``options`` are `Database`'s keyword arguments (``budget``, ``pooler``, ``poolclass``, …).
    Calling it again replaces the default; engines of the previous one close when their loops
    end. Raises what `Database` raises. Since 0.1.0.
    """
    global _default
    database = Database(url, **options)
    with _lock:
        _default = database
    _log.info("loopsafe.db.configured", database=database.name, url=str(database.url))
    return database


def get_database() -> Database:
    """The default `Database`; configured from ``$DATABASE_URL`` on first use if need be.

    Raises `DatabaseNotConfiguredError` when neither `configure()` was called nor
    ``DATABASE_URL`` is set. Since 0.1.0.
    """
    database = _default
    if database is not None:
        return database
    with _lock:
        if _default is None and not os.environ.get("DATABASE_URL"):
            raise DatabaseNotConfiguredError(
                "loopsafe.db has no default database: call loopsafe.db.configure(url) at startup "
                "(or set the DATABASE_URL environment variable)."
            )
    return _default if _default is not None else configure()


def get_engine() -> AsyncEngine:
    """This loop's engine of the default database (see `Database.get_engine`). Since 0.1.0."""
    return get_database().get_engine()


def session(*, commit: bool = True) -> AbstractAsyncContextManager[AsyncSession]:
    """A session of the default database (see `Database.session`). Since 0.1.0."""
    return get_database().session(commit=commit)


def session_maker() -> async_sessionmaker[AsyncSession]:
    """This loop's session maker of the default database. Since 0.1.0."""
    return get_database().session_maker()


async def run_in_transaction(fn: Callable[[AsyncSession], Awaitable[T]], *, retries: int = 3) -> T:
    """`Database.run_in_transaction` on the default database. Since 0.1.0."""
    return await get_database().run_in_transaction(fn, retries=retries)


def pool_status() -> PoolStatus:
    """`Database.pool_status` of the default database. Since 0.1.0."""
    return get_database().pool_status()


def _reset_default() -> None:
    """Forget the default database (tests use this to start clean)."""
    global _default
    with _lock:
        _default = None
