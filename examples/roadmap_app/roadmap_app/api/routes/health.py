"""`/health`: database reachability (down vs merely busy), connection-pool state, Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

import loopsafe.db
import loopsafe.redis
from roadmap_app.api.deps import SettingsDep
from roadmap_app.resources import budget_for

__all__ = ("router",)

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 3.0


async def _select_one() -> None:
    async with loopsafe.db.session(commit=False) as session:
        await session.execute(text("SELECT 1"))


async def _ping() -> None:
    await loopsafe.redis.get_redis().ping()


async def _problem(check: Callable[[], Awaitable[None]]) -> str | None:
    """None if `check` succeeds within the timeout, else what went wrong."""
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except asyncio.TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _busy(error: str | None, pool: dict[str, float]) -> bool:
    """Whether a failed check only waited for this process's own pool: busy, not down.

    Restarting a busy API would only add cold starts to the overload, so busy answers 200.
    """
    if error is None:
        return False
    return error.startswith("PoolExhaustedError") or (
        error.startswith("no answer") and (pool["waiting"] > 0 or pool["usage"] >= 1)
    )


@router.get("/health")
async def health(settings: SettingsDep) -> JSONResponse:
    """200 when the database answers or only this process's pool is busy (Redis down only
    degrades: events fall back to polling), 503 when the database is down. Includes this
    process's `pool_status()` and its connection budget."""
    db_error, redis_error = await asyncio.gather(_problem(_select_one), _problem(_ping))
    budget = budget_for(settings)
    pool = loopsafe.db.pool_status()
    busy = _busy(db_error, pool)
    down = db_error is not None and not busy
    body: dict[str, Any] = {
        "status": "down" if down else "busy" if busy else "degraded" if redis_error else "ok",
        "database": {
            "ok": db_error is None,
            "busy": busy,
            "error": db_error,
            "pool": pool,
            "budget": None
            if budget is None
            else {
                "max_connections": budget.max_connections,
                "processes": budget.processes,
                "per_process": budget.per_process,
                "pool_size": budget.pool_size,
                "max_overflow": budget.max_overflow,
                "role": settings.role,
            },
        },
        "redis": {"ok": redis_error is None, "error": redis_error},
    }
    return JSONResponse(body, status_code=503 if down else 200)
