"""Elastic roles: what the Redis ledger adds to a checkout (issue #20, goal 5).

One loop runs ``async with db.session()`` + ``SELECT 1`` back to back (BEGIN, SELECT 1, COMMIT)
against the same PostgreSQL and a local Redis, each way against the baseline with the same driver
settings:

- directly on the server: no budget (baseline), a static `BudgetPlan` role (the per-process cap
  of today), and an elastic role, whose lease lasts while the connection is open, so a checkout
  that reuses a warm pooled connection makes no round trip at all;
- with ``pooler="transaction"`` (asyncpg then keeps no prepared statements, which costs round
  trips of its own): no budget (baseline), and an elastic role with a lease per checkout: one
  ledger round trip to take it; giving it back costs the checkout nothing (carried by the next
  ask, or sent after);

and, for scale, one bare ``EVALSHA`` round trip to the same Redis. Goal: ≤ 1 ms added per
checkout, the median session time unchanged within noise. Rounds are interleaved and the best
kept (noise on a shared machine only adds); medians come from every call of every round.

Runs on ``$LOOPSAFE_BENCH_DATABASE_URL``/``$LOOPSAFE_BENCH_REDIS_URL`` (or the test ones), else
private embedded servers; writes results/ledger.md and results/ledger.png.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_results
from _servers import bench_servers

from loopsafe.db import BudgetPlan, Database, Role

SELECT_ONE = text("SELECT 1")
CALLS = 100
ROUNDS = 30

BASELINE = "no pooler: no budget (baseline)"
STATIC = "no pooler: static BudgetPlan role"
WHILE_OPEN = "no pooler: elastic role (lease while open)"
POOLER_BASELINE = "pooler='transaction': no budget (baseline)"
PER_CHECKOUT = "pooler='transaction': elastic role (lease per checkout)"
REDIS_TRIP = "one EVALSHA round trip to the ledger's Redis"
#: Each row against the baseline with the same driver settings: behind a transaction pooler
#: asyncpg keeps no prepared statements, which costs round trips of its own.
VERSUS = {STATIC: BASELINE, WHILE_OPEN: BASELINE, PER_CHECKOUT: POOLER_BASELINE}


async def _measure(database_url: str, redis_url: str) -> tuple[dict[str, float], dict[str, float]]:
    """Best seconds per call, and the median, for each row."""
    elastic = BudgetPlan(
        50,
        {"api": Role(priority=10), "worker": Role(headroom=5)},
        0,
        ledger=redis_url,
        name=f"bench{uuid.uuid4().hex[:8]}",
    )
    static = BudgetPlan(50, {"api": Role(processes=1), "worker": Role(processes=8)}, 0)
    databases = {
        BASELINE: Database(database_url, name="bench-plain"),
        STATIC: Database(database_url, name="bench-static", budget=static.budget_for("api")),
        WHILE_OPEN: Database(
            database_url, name="bench-while-open", budget=elastic.budget_for("api")
        ),
        POOLER_BASELINE: Database(database_url, name="bench-pooler", pooler="transaction"),
        PER_CHECKOUT: Database(
            database_url,
            name="bench-per-checkout",
            budget=elastic.budget_for("api"),
            pooler="transaction",
        ),
    }
    redis = Redis.from_url(redis_url)
    sha = await redis.script_load("return 1")

    def sessions(database: Database) -> Callable[[list[float]], Awaitable[None]]:
        async def run(samples: list[float]) -> None:
            for _ in range(CALLS):
                start = time.perf_counter()
                async with database.session() as session:
                    assert (await session.execute(SELECT_ONE)).scalar_one() == 1
                samples.append(time.perf_counter() - start)

        return run

    async def round_trips(samples: list[float]) -> None:
        for _ in range(CALLS):
            start = time.perf_counter()
            await redis.evalsha(sha, 0)
            samples.append(time.perf_counter() - start)

    runs = {label: sessions(database) for label, database in databases.items()}
    runs[REDIS_TRIP] = round_trips
    samples: dict[str, list[float]] = {label: [] for label in runs}
    try:
        for run in runs.values():  # warm up: connections, statements, a fresh ledger's settling
            await run([])
        await asyncio.sleep(1.0)
        for run in runs.values():
            await run([])
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(ROUNDS):
            for label, run in runs.items():  # interleaved: drift hits every row alike
                before = len(samples[label])
                start = time.perf_counter()
                await run(samples[label])
                best[label] = min(best[label], (time.perf_counter() - start) / CALLS)
                assert len(samples[label]) == before + CALLS
        medians = {label: statistics.median(values) for label, values in samples.items()}
        status = databases[PER_CHECKOUT].pool_status()["ledger"]
        assert status["mode"] == "ledger", status
    finally:
        for database in databases.values():
            await database.aclose()
        await redis.aclose()
    return best, medians


def main() -> None:
    load_before = os.getloadavg()[0]
    with bench_servers() as (database_url, redis_url):
        best, medians = asyncio.run(_measure(database_url, redis_url))
    load_after = os.getloadavg()[0]
    rows: list[list[object]] = []
    for label, seconds in best.items():
        if label == REDIS_TRIP:
            versus = "reference"
        elif label not in VERSUS:
            versus = "baseline"
        else:
            base = best[VERSUS[label]]
            versus = f"{seconds / base:.3f}×, {(seconds - base) * 1e6:+.0f} µs"
        rows.append([label, f"{seconds * 1e6:.1f}", f"{medians[label] * 1e6:.1f}", versus])
    added = (best[PER_CHECKOUT] - best[POOLER_BASELINE]) * 1e6
    added_open = (best[WHILE_OPEN] - best[BASELINE]) * 1e6
    median_ratio = medians[PER_CHECKOUT] / medians[POOLER_BASELINE]
    met = "met" if added <= 1000 else "NOT met"
    write_results(
        "ledger",
        "Elastic ledger: cost per checkout (SELECT 1 per session)",
        ["what", "µs/call (best round)", "µs/call (median)", "vs its baseline"],
        rows,
        chart_labels=list(best),
        chart_values=[seconds * 1e6 for seconds in best.values()],
        chart_xlabel="µs per session (lower is better)",
        notes=(
            f"Goal: ≤ 1 ms added per checkout by the ledger on a local Redis, median session "
            f"time unchanged within noise. Measured: a lease per checkout adds {added:+.0f} µs "
            f"({met}), the median session {median_ratio:.2f}× the baseline's; a lease while "
            f"the connection is open adds {added_open:+.0f} µs (a warm connection already "
            "holds its lease: no round trip). Taking a lease is one EVALSHA (the Lua script "
            "checks the limit, the headroom, higher-priority waiters and the role's line, and "
            "records the lease); giving it back is sent at once from the checkin's loop, off the "
            "session's path (the ledger hands the connection to the next waiter as it arrives), "
            "and an ask of this process that overtakes it carries it along, so sessions that "
            "follow each other closely pay one round trip each. "
            f"Best of {ROUNDS} interleaved rounds of {CALLS} "
            "sequential sessions on one loop; medians over every session of every round; "
            "embedded (or $LOOPSAFE_BENCH_*) PostgreSQL and Redis on a shared 2-core machine "
            f"(load average {load_before:.1f} at the start, {load_after:.1f} at the end; the "
            "bare round trip row shows what one trip to Redis cost meanwhile)."
        ),
    )


if __name__ == "__main__":
    main()
