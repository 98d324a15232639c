"""Elastic roles across real processes: one limit for all, first come first served between them,
leases of a SIGKILLed process coming back, and a Redis restart survived without exceeding."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from loopsafe.db import BudgetPlan, Database, PoolExhaustedError, Role
from loopsafe.testing import EmbeddedRedis

from ..conftest import logged
from .conftest import TOO_MANY, limited_role
from .elastic_worker import claim_slot

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Every child process gets this long; a deadlock fails one test instead of holding the run.
DEADLINE = 120


def plan_json(redis_url: str, limit: int, roles: Mapping[str, Mapping[str, int]]) -> str:
    return json.dumps(
        {
            "max_connections": limit,
            "reserve": 0,
            "ledger": redis_url,
            "name": f"p{uuid.uuid4().hex[:10]}",
            "roles": roles,
        }
    )


class Children:
    """Child processes of a test, each killed at the end if still running."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.db.elastic_worker", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(child)
        return child

    def close(self) -> None:
        for child in self.processes:
            if child.poll() is None:
                child.kill()
            child.communicate(timeout=DEADLINE)


@pytest.fixture
def children() -> Iterator[Children]:
    made = Children()
    try:
        yield made
    finally:
        made.close()


async def readline(child: subprocess.Popen[str], timeout: float = 60) -> str:
    assert child.stdout is not None
    return (await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout)).strip()


async def eventually(check: Any, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def ledger(db: Database) -> Mapping[str, Any]:
    return db.pool_status()["ledger"]


def hammer_all(children: Children, workers: list[tuple[str, ...]]) -> list[list[str]]:
    started = [children.start(*args) for args in workers]
    for child in started:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in started:
        out, err = child.communicate(timeout=DEADLINE)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def test_processes_of_two_roles_never_hold_more_than_the_limit_behind_a_pooler(
    postgres_url: str, redis_url: str, children: Children
) -> None:
    """3 worker processes × 20 concurrent transactions and an API process: 6 slots, none left over."""
    plan = plan_json(redis_url, 6, {"api": {"priority": 10}, "worker": {"headroom": 2}})
    worker = ("hammer", plan, "worker", postgres_url, "transaction", "20", "3", "0.02", "6")
    api = ("hammer", plan, "api", postgres_url, "transaction", "4", "10", "0.01", "6")
    results = await asyncio.to_thread(hammer_all, children, [worker, worker, worker, api])
    assert results == [[], [], [], []]


async def test_processes_directly_on_the_server_never_open_more_than_the_limit(
    postgres_url: str, redis_url: str, children: Children
) -> None:
    """Without a pooler a lease lasts while the connection is open: the server allows exactly 5."""
    plan = plan_json(redis_url, 5, {"api": {"priority": 10}, "worker": {"headroom": 1}})
    async with limited_role(postgres_url, 5) as url:
        worker = ("hammer", plan, "worker", url, "none", "15", "2", "0.02", "0")
        api = ("hammer", plan, "api", url, "none", "3", "5", "0.01", "0")
        results = await asyncio.to_thread(hammer_all, children, [worker, worker, worker, api])
    assert results == [[], [], [], []], [e for r in results for e in r if TOO_MANY in e]


async def test_waiters_are_served_first_come_first_served_across_processes(
    postgres_url: str, redis_url: str, children: Children
) -> None:
    plan = plan_json(redis_url, 1, {"worker": {}})
    db = Database(
        postgres_url,
        name="fcfs",
        budget=BudgetPlan.load(plan).budget_for("worker"),
        pooler="transaction",
    )
    queued = []
    async with db.session() as session:
        await session.execute(text("SELECT 1"))  # the one connection is this process's
        for n in range(3):
            child = children.start("queue", plan, "worker", postgres_url, "transaction", "0.2")
            assert await readline(child) == "asking"
            # In line before the next one starts: the ledger shows it waiting.
            await eventually(lambda n=n: ledger(db)["waiting"]["worker"] == n + 1)
            queued.append(child)
    got = [float((await readline(child, 30)).split()[1]) for child in queued]
    assert got == sorted(got), got  # served in the order they arrived, across processes
    for child in queued:
        child.communicate(timeout=DEADLINE)
        assert child.returncode == 0
    await db.aclose()


async def test_the_leases_of_a_sigkilled_process_come_back_within_the_lease_expiry(
    postgres_url: str, redis_url: str, children: Children
) -> None:
    plan = plan_json(redis_url, 3, {"worker": {}})
    holder = children.start("hold", plan, "worker", postgres_url, "transaction", "3")
    assert await readline(holder) == "held"
    db = Database(
        postgres_url,
        name="sigkill",
        budget=BudgetPlan.load(plan).budget_for("worker"),
        pooler="transaction",
        engine_options={"pool_timeout": 0.3},
    )
    with pytest.raises(PoolExhaustedError):  # the other process really holds all three
        async with db.session():
            pass
    holder.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    holder.wait(timeout=DEADLINE)
    # Ask until the leases come back (each ask waits at most pool_timeout).
    while True:
        try:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
            break
        except PoolExhaustedError:
            assert time.monotonic() - killed < 10, "the dead process's leases never came back"
    back = time.monotonic() - killed
    assert back <= 5.0, f"took {back:.2f} s, over the 5 s goal"
    await db.aclose()


async def test_a_redis_restart_falls_back_to_a_share_and_rejoins_without_a_leak(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="loopsafe.db")
    with EmbeddedRedis() as server:
        plan = BudgetPlan(
            4, {"api": Role(priority=10), "worker": Role()}, 0, ledger=server.url, name="restart"
        )
        options = {"pool_timeout": 30}
        worker = Database(
            postgres_url,
            name="restart-w",
            budget=plan.budget_for("worker"),
            pooler="transaction",
            engine_options=options,
        )
        api = Database(
            postgres_url, name="restart-a", budget=plan.budget_for("api"), pooler="transaction"
        )
        observer = redis.Redis.from_url(server.url)
        total = "loopsafe:ledger:{restart}:total"

        async def sessions(db: Database, count: int, slots: int) -> list[BaseException]:
            async def one() -> None:
                async with db.session() as session:
                    await claim_slot(session, slots, server.url)
                    await session.execute(text("SELECT pg_sleep(0.02)"))

            outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
            return [o for o in outcomes if isinstance(o, BaseException)]

        assert await sessions(worker, 8, 4) == []
        assert await sessions(api, 2, 4) == []
        # Both roles' processes are in the ledger: each would keep to 4 × 1 / 2 = 2 without it.
        await eventually(lambda: ledger(worker)["members"] == {"api": 1, "worker": 1})
        assert ledger(worker)["fallback_share"] == ledger(api)["fallback_share"] == 2
        server.stop()
        # 12 worker sessions at once while Redis is away: never more than the share of 2 open.
        assert await sessions(worker, 12, 2) == []
        assert await sessions(api, 3, 2) == []  # and the API is served by its own share
        [fallback] = [
            e for e in logged(caplog, "loopsafe.db.ledger_fallback") if e["role"] == "worker"
        ]
        assert fallback["share"] == 2
        assert ledger(worker)["mode"] == "fallback"
        # Hold two fallback leases while Redis comes back, empty: they are registered, not lost.
        async with worker.session() as one, worker.session() as two:
            await one.execute(text("SELECT 1"))
            await two.execute(text("SELECT 1"))
            server.start()
            await eventually(lambda: ledger(worker)["mode"] == "ledger")
            await eventually(lambda: int(observer.get(total) or 0) == 2)
        assert [e["role"] for e in logged(caplog, "loopsafe.db.ledger_rejoined")].count(
            "worker"
        ) == 1
        assert await sessions(worker, 8, 4) == []  # coordinated again
        await eventually(lambda: int(observer.get(total) or 0) == 0)  # nothing leaked
        await worker.aclose()
        await api.aclose()
        observer.close()


async def test_a_holder_frozen_across_a_redis_restart_is_never_granted_over(
    postgres_url: str, children: Children
) -> None:
    """A process holding 2 of 4 connections is frozen (SIGSTOP: its heartbeat starved) while
    Redis restarts empty, and thawed 1 s later: until it has re-registered its leases the
    ledger grants nothing, so this process never gets more than the 2 left."""
    with EmbeddedRedis() as server:
        plan = plan_json(server.url, 4, {"worker": {}})
        holder = children.start("hold", plan, "worker", postgres_url, "transaction", "2", "4")
        assert await readline(holder) == "held"
        db = Database(
            postgres_url,
            name="frozen",
            budget=BudgetPlan.load(plan).budget_for("worker"),
            pooler="transaction",
            engine_options={"pool_timeout": 30},
        )
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
        holder.send_signal(signal.SIGSTOP)
        server.stop()
        server.start()

        async def thaw() -> None:
            await asyncio.sleep(1.0)  # longer than the 0.5 s the ledger used to settle for
            holder.send_signal(signal.SIGCONT)

        async def one() -> None:
            async with db.session() as session:
                # The holder's two slots are still taken.
                await claim_slot(session, 4, json.loads(plan)["name"])
                await session.execute(text("SELECT pg_sleep(0.1)"))

        thawing = asyncio.ensure_future(thaw())
        errors: list[BaseException] = []
        until = time.monotonic() + 5.0  # past the settling of the restarted ledger
        while time.monotonic() < until:
            outcomes = await asyncio.gather(*(one() for _ in range(6)), return_exceptions=True)
            errors.extend(o for o in outcomes if isinstance(o, BaseException))
        await thawing
        assert errors == [], errors[:3]
        assert ledger(db)["served_at_once"] + ledger(db)["served_after_wait"] > 7
        await db.aclose()
