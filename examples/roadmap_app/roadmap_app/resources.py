"""Points loopsafe's default database and Redis client at the configured servers."""

from __future__ import annotations

from sqlalchemy.engine import make_url

import loopsafe.db
import loopsafe.redis
from loopsafe.db import Database, PoolBudget
from roadmap_app.config import Settings

__all__ = ("budget_for", "configure_resources")


def budget_for(settings: Settings) -> PoolBudget | None:
    """This process's connection budget: its role's share of `LOOPSAFE_BUDGET_PLAN` (the role
    from `LOOPSAFE_ROLE`), else `DATABASE_MAX_CONNECTIONS` split evenly over `LOOPSAFE_PROCESSES`
    × `LOOPSAFE_LOOPS_PER_PROCESS` (the latter for Celery's threads pool); either way the API and
    the workers together never exceed it. None with `DATABASE_POOL_SIZE`: a fixed pool, no
    budget (the configuration budgets replace, kept to measure against)."""
    if settings.database_pool_size is not None:
        return None
    if settings.budget_plan is not None:
        return settings.budget_plan.budget_for(settings.role)
    return PoolBudget(
        max_connections=settings.database_max_connections,
        processes=settings.processes,
        loops_per_process=settings.loops_per_process,
    )


def configure_resources(settings: Settings) -> Database:
    """Configure the default `Database` and Redis client; nothing connects until first use."""
    options: dict[str, float] = {"pool_timeout": settings.database_pool_timeout_s}
    if settings.database_pool_size is not None:
        options["pool_size"] = settings.database_pool_size
        options["max_overflow"] = settings.database_max_overflow
    url = make_url(settings.database_url)
    if settings.role is not None and "application_name" not in url.query:
        # pg_stat_activity and PgBouncer's SHOW CLIENTS then tell the API from each worker queue.
        url = url.update_query_dict({"application_name": f"roadmap:{settings.role}"})
    database = loopsafe.db.configure(
        url,
        budget=budget_for(settings),
        pooler=settings.database_pooler,
        engine_options=options,
    )
    loopsafe.redis.configure(settings.redis_url, socket_connect_timeout=2.0)
    return database
