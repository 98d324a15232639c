"""Points loopsafe's default database and Redis client at the configured servers."""

from __future__ import annotations

import loopsafe.db
import loopsafe.redis
from loopsafe.db import Database, PoolBudget
from roadmap_app.config import Settings

__all__ = ("budget_for", "configure_resources")


def budget_for(settings: Settings) -> PoolBudget:
    """The connection budget every process of the app shares (`DATABASE_MAX_CONNECTIONS` split
    over `LOOPSAFE_PROCESSES` × `LOOPSAFE_LOOPS_PER_PROCESS`, the latter for Celery's threads
    pool): the API and the workers together never exceed it."""
    return PoolBudget(
        max_connections=settings.database_max_connections,
        processes=settings.processes,
        loops_per_process=settings.loops_per_process,
    )


def configure_resources(settings: Settings) -> Database:
    """Configure the default `Database` and Redis client; nothing connects until first use."""
    database = loopsafe.db.configure(settings.database_url, budget=budget_for(settings))
    loopsafe.redis.configure(settings.redis_url, socket_connect_timeout=2.0)
    return database
