"""FastAPI glue: a session dependency per request (and the deprecated `lifespan`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession

from .._log import get_logger
from ._database import live_databases
from ._default import get_database

__all__ = ("lifespan", "session_dependency")

_log = get_logger("loopsafe.db")


async def session_dependency() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: a session of the default database for one request.

    Commits when the endpoint returns, rolls back if it raises. Use it as
    ``SessionDep = Annotated[AsyncSession, Depends(loopsafe.db.session_dependency)]``.

    .. versionadded:: 0.1.0
    """
    async with get_database().session() as session:
        yield session


@contextlib.asynccontextmanager
async def lifespan(app: object) -> AsyncIterator[None]:
    """FastAPI/Starlette lifespan: on shutdown, dispose every Database's engine on the server's
    loop (databases only: Redis and LLM clients stay open).

    .. deprecated:: 0.1.0
       Use `loopsafe.fastapi.install`, which wraps the app's own lifespan and closes every
       loopsafe resource.
    """
    try:
        yield
    finally:
        for database in live_databases():
            try:
                await database.aclose()
            except Exception as error:  # one failing database must not keep the others open
                _log.warning(
                    "loopsafe.db.shutdown_close_failed",
                    database=database.name,
                    error=f"{type(error).__name__}: {error}",
                )
