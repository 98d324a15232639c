"""run_async in sync web servers: thread churn, connection peaks, and per-call cost of both modes.

The measurable goals of issue #24, measured against real PostgreSQL and Redis:

1. a thread per call, 300 calls at 10 and at 20 concurrent, each ``run_async(session SELECT 1 +
   publish)``, in a fresh process per mode: failures, peak PostgreSQL connections and Redis
   clients (counted by application_name / client name, every 20 ms);
2. ``flask run --with-threads`` with 1000 requests at 20 concurrent (shared process loop), and
   gunicorn gthread 2 × 8 under a budget of 24 connections (per-thread loops), real servers;
3. per-call cost of a no-op ``run_async`` on per-thread loops and on the shared process loop,
   against a bare ``loop.run_until_complete`` and ``asyncio.run`` (best of 5, same run).

Writes results/sync_servers.md and .png.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The recipe apps and their server harness live with their tests.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _report import best_per_call, write_results
from _servers import bench_servers
from tests.bridge.servers import Watcher, new_name, recipe_env, serve, server_command

from loopsafe import close_all_loops, run_async, use_process_loop
from loopsafe.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
CALLS = 300
ONE_POOL = 15  # SQLAlchemy's default QueuePool: 5 + 10 overflow
REQUESTS = 1000
BUDGET = 24
NUMBER = 2000


async def noop() -> None:
    return None


def thread_per_call(
    database_url: str, redis_url: str, mode: str, concurrency: int
) -> tuple[int, int, int]:
    """(failures, peak PostgreSQL connections, peak Redis clients) of one scripted run."""
    name = new_name()
    env = recipe_env(database_url, redis_url, name, {"LOOPSAFE_RUN_ASYNC_LOOP": mode})
    env.pop("LOOPSAFE_APP_LOG")
    watcher = Watcher(database_url, redis_url, name)
    try:
        with watcher.watching() as peak:
            result = subprocess.run(
                [sys.executable, "-m", "tests.bridge.apps.script", str(CALLS), str(concurrency)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
    finally:
        watcher.close()
    failures = CALLS
    for line in result.stdout.splitlines():
        if line.startswith("failures="):
            failures = int(line.partition("=")[2])
    return failures, peak.postgres, peak.redis


def served(
    database_url: str, redis_url: str, recipe: str, extra: dict[str, str]
) -> tuple[int, int, int]:
    """(failed requests, peak connections, peak Redis clients) of REQUESTS at 20 concurrent."""
    name = new_name()
    env = recipe_env(database_url, redis_url, name, extra)
    env.pop("LOOPSAFE_APP_LOG")
    watcher = Watcher(database_url, redis_url, name)
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        try:
            with serve(server_command(recipe, port), env, port, Path(directory) / "log") as server:
                with watcher.watching() as peak:
                    failed = server.load(REQUESTS, 20)
                server.stop()
        finally:
            watcher.close()
    return failed, peak.postgres, peak.redis


def overhead() -> dict[str, float]:
    """Seconds per no-op call of each way of running a coroutine from sync code."""
    loop = asyncio.new_event_loop()
    costs: dict[str, list[float]] = {}
    try:
        for _ in range(5):
            costs.setdefault("loop.run_until_complete (floor)", []).append(
                best_per_call(lambda: loop.run_until_complete(noop()), number=NUMBER, repeat=1)
            )
            for mode in ("thread", "process"):
                close_all_loops()
                use_process_loop(mode == "process")
                run_async(noop())
                costs.setdefault(f"run_async, {mode} loop", []).append(
                    best_per_call(lambda: run_async(noop()), number=NUMBER, repeat=1)
                )
            costs.setdefault("asyncio.run", []).append(
                best_per_call(lambda: asyncio.run(noop()), number=NUMBER // 10, repeat=1)
            )
    finally:
        use_process_loop(False)
        close_all_loops()
        loop.close()
    return {what: min(values) for what, values in costs.items()}


def main() -> None:
    rows: list[list[object]] = []
    labels: list[str] = []
    values: list[float] = []
    with bench_servers() as (database_url, redis_url):
        for mode in ("thread", "process"):
            for concurrency in (10, 20):
                failures, postgres, clients = thread_per_call(
                    database_url, redis_url, mode, concurrency
                )
                rows.append([
                    f"thread per call, {CALLS} calls at {concurrency}", f"{mode} loop",
                    f"{failures} of {CALLS}", postgres, clients,
                    "met" if failures == 0 and postgres <= ONE_POOL else "NOT met",
                ])  # fmt: skip
        flask = served(database_url, redis_url, "flask", {"LOOPSAFE_RUN_ASYNC_LOOP": "process"})
        rows.append([
            f"flask run --with-threads, {REQUESTS} requests at 20", "process loop",
            f"{flask[0]} of {REQUESTS}", flask[1], flask[2],
            "met" if flask[0] == 0 and flask[1] <= ONE_POOL else "NOT met",
        ])  # fmt: skip
        budget = {
            "DATABASE_MAX_CONNECTIONS": str(BUDGET), "LOOPSAFE_PROCESSES": "2",
            "LOOPSAFE_LOOPS_PER_PROCESS": "8", "LOOPSAFE_DB_RESERVE": "0",
        }  # fmt: skip
        gthread = served(database_url, redis_url, "gunicorn-gthread", budget)
        rows.append([
            f"gunicorn gthread 2 × 8, budget {BUDGET}, {REQUESTS} requests at 20",
            "thread loops (8 per process)", f"{gthread[0]} of {REQUESTS}", gthread[1], gthread[2],
            "met" if gthread[0] == 0 and gthread[1] <= BUDGET else "NOT met",
        ])  # fmt: skip
    costs = overhead()
    floor = costs["loop.run_until_complete (floor)"]
    per_thread = costs["run_async, thread loop"]
    for what, cost in costs.items():
        labels.append(what)
        values.append(cost * 1e6)
        rows.append([
            "per call (no-op)", what, f"{cost * 1e6:.1f} µs", f"{cost / floor:.2f}× floor",
            f"{costs['asyncio.run'] / cost:.1f}× cheaper than asyncio.run"
            if what != "asyncio.run" else "", "",
        ])  # fmt: skip
    write_results(
        "sync_servers",
        "run_async in sync web servers: thread churn, connections, per-call cost",
        [
            "workload",
            "mode",
            "failures / cost",
            "peak PostgreSQL connections / vs floor",
            "peak Redis clients / vs asyncio.run",
            "goal",
        ],
        rows,
        chart_labels=labels,
        chart_values=values,
        chart_xlabel="µs per no-op call (lower is better)",
        notes=(
            f"Goals: 0 failures and peak connections ≤ one pool ({ONE_POOL}, SQLAlchemy's default "
            f"5 + 10) for a thread per call and the Flask dev server; ≤ the budget ({BUDGET}) for "
            "gunicorn gthread 2 × 8. Connections and clients are counted on the servers by the "
            "app's application_name / client name every 20 ms (a short peak between two samples "
            "can be missed). Per-thread loops give each live thread a loop and a pool, so a "
            "thread per call at 20 concurrent needs the process loop (LOOPSAFE_RUN_ASYNC_LOOP="
            "process) to stay within one pool; per-thread loops are the default because a call "
            f"costs {per_thread / floor:.2f}× the floor there and a blocking coroutine holds up "
            "only its own thread. Shared 2-core machine: compare figures of the same run."
        ),
    )


if __name__ == "__main__":
    main()
