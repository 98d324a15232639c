"""`/health`: database reachability and connection-pool state, Redis reachability."""

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


@router.get("/health")
async def health(settings: SettingsDep) -> JSONResponse:
    """200 when the database answers (Redis down only degrades: events fall back to polling),
    503 otherwise. Includes this process's `pool_status()` and the shared connection budget."""
    db_error, redis_error = await asyncio.gather(_problem(_select_one), _problem(_ping))
    budget = budget_for(settings)
    body: dict[str, Any] = {
        "status": "ok" if db_error is None and redis_error is None else "degraded",
        "database": {
            "ok": db_error is None,
            "error": db_error,
            "pool": loopsafe.db.pool_status(),
            "budget": {
                "max_connections": budget.max_connections,
                "processes": budget.processes,
                "per_process": budget.per_process,
                "pool_size": budget.pool_size,
                "max_overflow": budget.max_overflow,
            },
        },
        "redis": {"ok": redis_error is None, "error": redis_error},
    }
    return JSONResponse(body, status_code=200 if db_error is None else 503)
