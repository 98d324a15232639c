"""What every recipe app does per request: a session's SELECT 1 and a publish, via run_async.

Configured from the environment the test (or the benchmark) sets: ``DATABASE_URL``,
``REDIS_URL``, ``LOOPSAFE_APP_NAME`` (the PostgreSQL application_name and Redis client name the
test counts connections by) and, when ``DATABASE_MAX_CONNECTIONS`` is set, a `PoolBudget` from
the environment.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy import text

import loopsafe
import loopsafe.db
import loopsafe.redis

__all__ = ("CHANNEL", "handle", "setup")

CHANNEL = "loopsafe-recipes"


def setup() -> None:
    """Configure the database and Redis, and do import-time work as apps do (a first query)."""
    name = os.environ["LOOPSAFE_APP_NAME"]
    if os.environ.get("LOOPSAFE_APP_LOG"):
        # The tests read loopsafe's events (loops created, closed) from the server's stderr.
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
        logging.getLogger("loopsafe").setLevel(logging.INFO)
        logging.getLogger("loopsafe.run_async").setLevel(logging.DEBUG)
    budget = (
        loopsafe.db.PoolBudget.from_env() if os.environ.get("DATABASE_MAX_CONNECTIONS") else None
    )
    loopsafe.db.configure(
        os.environ["DATABASE_URL"],
        budget=budget,
        engine_options={"connect_args": {"server_settings": {"application_name": name}}},
    )
    loopsafe.redis.configure(os.environ["REDIS_URL"], client_name=name)
    # Import-time work (creating tables, warming a cache): it runs on the main thread's loop,
    # which loopsafe closes once idle, so it does not pin a connection for the process's life.
    loopsafe.run_async(handle())


async def handle() -> int:
    """One request's work; raises if the database or Redis failed."""
    async with loopsafe.db.session() as session:
        value = int((await session.execute(text("SELECT 1"))).scalar_one())
    if not await loopsafe.redis.publish(CHANNEL, "hit"):
        raise RuntimeError("publish failed")
    return value
