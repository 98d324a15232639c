"""The Celery app that the real-worker tests run (``celery -A tests.celery.worker_app worker``).

Configured from ``LOOPSAFE_CELERY_*`` environment variables set by the tests' fixtures. Like many
real apps it touches the database at import time, in the worker's main process, before the pool
forks: the classic trap (children inherit a live pool bound to the parent's loop and sockets).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from typing import Any

from celery import Celery, Task, signals
from sqlalchemy import text

import loopsafe.db
import loopsafe.redis
from loopsafe.celery import async_task, install, run_async
from loopsafe.db import PoolBudget, configure, session

BROKER_URL = os.environ["LOOPSAFE_CELERY_BROKER"]
BACKEND_URL = os.environ["LOOPSAFE_CELERY_BACKEND"]
QUEUE = os.environ["LOOPSAFE_CELERY_QUEUE"]
DATABASE_URL = os.environ["LOOPSAFE_CELERY_DATABASE_URL"]
DATABASE_NAME = os.environ["LOOPSAFE_CELERY_DATABASE_NAME"]  # application_name loopsafe:<name>
REDIS_URL = os.environ["LOOPSAFE_CELERY_REDIS_URL"]
TABLE = os.environ["LOOPSAFE_CELERY_TABLE"]
CHANNEL = f"{QUEUE}:events"

# Celery ships no type information, so `app` is Any to mypy, and `@async_task(app)` cannot be told
# from the bare `@async_task` form: with celery-types installed the decorated tasks are typed.
app = Celery("loopsafe_worker_tests", broker=BROKER_URL, backend=BACKEND_URL)
transport_options: dict[str, Any] = {}
if BROKER_URL.startswith("redis"):
    # Isolate every kombu key of this run (queues, unacked hash, bindings) from other runs that
    # share the Redis server; the redelivery test shortens the visibility timeout.
    transport_options["global_keyprefix"] = f"{QUEUE}:"
    visibility = os.environ.get("LOOPSAFE_CELERY_VISIBILITY_TIMEOUT")
    if visibility:
        transport_options.update(
            visibility_timeout=int(visibility),
            unacked_restore_interval=1,
            unacked_restore_throttle=1,
        )
app.conf.update(
    task_default_queue=QUEUE,
    broker_transport_options=transport_options,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_prefetch_multiplier=1,
    # revoke(terminate=True) needs remote control; the other tests do without the pidbox.
    worker_enable_remote_control=bool(os.environ.get("LOOPSAFE_CELERY_REMOTE_CONTROL")),
    worker_hijack_root_logger=True,
    task_serializer="json",
    result_serializer="json",
    result_accept_content=["json"],
)
# LOOPSAFE_CELERY_LOOP=process: the shared-loop tests (on uvloop, to cover loop_factory);
# =thread: per-thread loops even in the threads pool; unset: install()'s default.
LOOP = os.environ.get("LOOPSAFE_CELERY_LOOP")
if LOOP == "process":
    import uvloop

    install(
        app,
        loop="process",
        loop_factory=uvloop.new_event_loop,
        blocked_after=0.3,
        drain_timeout=float(os.environ.get("LOOPSAFE_CELERY_DRAIN_TIMEOUT", "30")),
    )
elif LOOP == "thread":
    install(app, loop="thread")
else:
    install(app)
# The tests count loopsafe's debug events: every resource created must be closed in its loop.
# Until the worker sets up logging (after this import), events go to stderr through this.
logging.basicConfig(level=logging.INFO, format="[import] %(message)s")
logging.getLogger("loopsafe").setLevel(logging.DEBUG)

BUDGET_PROCESSES = os.environ.get("LOOPSAFE_CELERY_BUDGET_PROCESSES")
configure(
    DATABASE_URL,
    name=DATABASE_NAME,
    budget=PoolBudget(50, processes=int(BUDGET_PROCESSES)) if BUDGET_PROCESSES else None,
)
loopsafe.redis.configure(REDIS_URL)


async def _touch_database() -> int:
    async with session() as db:
        value: int = (await db.execute(text("SELECT 1"))).scalar_one()
    return value


# The trap: a pooled connection opened in the main process at import, before the fork.
assert run_async(_touch_database()) == 1


@async_task(app)  # type: ignore[untyped-decorator]
async def query_and_publish(n: int) -> dict[str, Any]:
    """One database round trip and one publish, like a typical task's bookkeeping."""
    async with session() as db:
        row = (
            await db.execute(text("SELECT CAST(:n AS int) * 2, pg_backend_pid()"), {"n": n})
        ).one()
    published = await loopsafe.redis.publish(CHANNEL, {"n": n})
    return {"n": n, "double": row[0], "backend_pid": row[1], "pid": os.getpid(), "ok": published}


@async_task(app, soft_time_limit=1)
async def sleep_past_soft_limit(marker: str) -> None:
    """Sleeps far beyond its soft limit; its cleanup records that it ran."""
    try:
        await asyncio.sleep(30)
    finally:
        async with session() as db:
            await db.execute(
                text(f"INSERT INTO {TABLE} (marker, note) VALUES (:marker, 'cleanup ran')"),
                {"marker": marker},
            )


@async_task(app, acks_late=True, reject_on_worker_lost=True)
async def slow_the_first_time(key: str) -> dict[str, Any]:
    """First delivery: marks `key` and sleeps (the worker gets killed). Redelivery: returns."""
    client = loopsafe.redis.get_redis()
    first = await client.set(key, os.getpid(), nx=True, ex=600)
    if first:
        await asyncio.sleep(120)
    return {"redelivered": not first, "pid": os.getpid()}


async def _count(key: str) -> int:
    client = loopsafe.redis.get_redis()
    attempts: int = await client.incr(key)
    await client.expire(key, 600)
    return attempts


@async_task(app, bind=True, max_retries=3)
async def retry_twice(self: Task, key: str) -> dict[str, Any]:
    """A bound task that asks Celery to retry it twice through self.retry()."""
    attempts = await _count(key)
    if self.request.retries < 2:
        raise self.retry(countdown=0)
    return {"retries": self.request.retries, "attempts": attempts, "id": self.request.id}


@async_task(app, autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 3, "countdown": 0})
async def flaky(key: str) -> int:
    """Fails with ConnectionError twice; autoretry_for retries it."""
    attempts = await _count(key)
    if attempts < 3:
        raise ConnectionError(f"attempt {attempts} failed")
    return attempts


@async_task(app)  # type: ignore[untyped-decorator]
async def missing_row(row_id: int) -> None:
    """Fails with a built-in exception type that the result backend must keep."""
    async with session() as db:
        found = (await db.execute(text("SELECT 1 WHERE false"))).first()
    if found is None:
        raise LookupError(f"no row {row_id}")


# --- the shared process loop (LOOPSAFE_CELERY_LOOP=process) ----------------------------------------

#: Set by a task_prerun receiver in the worker thread; the coroutine must see it.
tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="unset")


@signals.task_prerun.connect  # type: ignore[untyped-decorator]  # Celery is untyped
def _set_tenant(task_id: str = "", **_: Any) -> None:
    tenant.set(f"tenant-of-{task_id}")


_IN_FLIGHT = """
local now = redis.call('incr', KEYS[1])
if now > tonumber(redis.call('get', KEYS[2]) or '0') then redis.call('set', KEYS[2], now) end
redis.call('expire', KEYS[1], 600)
redis.call('expire', KEYS[2], 600)
return now
"""


async def _in_flight(key: str, seconds: float) -> None:
    """Hold a slot of `key`'s in-flight counter for `seconds`; `key`:max keeps the peak."""
    client = loopsafe.redis.get_redis()
    await client.eval(_IN_FLIGHT, 2, f"{key}:now", f"{key}:max")
    try:
        await asyncio.sleep(seconds)
    finally:
        await client.decr(f"{key}:now")


@async_task(app, bind=True)
async def where_am_i(self: Task, key: str) -> dict[str, Any]:
    """Where the coroutine ran, what it saw of its task, and how many ran at once."""
    await _in_flight(key, 0.5)
    async with session() as db:
        await db.execute(text("SELECT 1"))
    loop = asyncio.get_running_loop()
    return {
        "request_id": self.request.id,
        "tenant": tenant.get(),
        "loop": f"{type(loop).__module__}.{type(loop).__name__}:{id(loop)}",
        "thread": threading.current_thread().name,
        "pid": os.getpid(),
        "loops": loopsafe.db.pool_status()["loops"],
    }


@async_task(app, rate_limit="30/m")
async def rate_limited(key: str) -> None:
    """At most one every two seconds: two of them never run at the same time."""
    await _in_flight(key, 0.2)


async def _mark_started(marker: str) -> None:
    await loopsafe.redis.get_redis().set(f"{marker}:started", 1, ex=600)


async def _record_cleanup(marker: str) -> None:
    async with session() as db:
        await db.execute(
            text(f"INSERT INTO {TABLE} (marker, note) VALUES (:marker, 'cleanup ran')"),
            {"marker": marker},
        )


@async_task(app)  # type: ignore[untyped-decorator]
async def sleep_with_cleanup(marker: str, seconds: float) -> str:
    """Marks itself started, sleeps; its cleanup records that it ran, however it ended."""
    await _mark_started(marker)
    try:
        await asyncio.sleep(seconds)
    finally:
        await _record_cleanup(marker)
    return "slept"


@async_task(app, time_limit=1)
async def sleep_past_hard_limit(marker: str) -> None:
    """Sleeps far beyond its (hard) time limit; its cleanup records that it ran."""
    try:
        await asyncio.sleep(30)
    finally:
        await _record_cleanup(marker)


@async_task(app)  # type: ignore[untyped-decorator]
async def block_the_loop(seconds: float) -> str:
    """The classic mistake: a blocking call inside a coroutine."""
    time.sleep(seconds)  # noqa: ASYNC251 - on purpose: the blocked-loop report must name us
    return "blocked"


@app.task  # type: ignore[untyped-decorator]
def add(a: int, b: int) -> int:
    """A plain sync task in the same worker."""
    return a + b
