"""Pool pressure: pool_status waits and usage, alert events, the Prometheus collector, 503s."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text

import loopsafe.db
import loopsafe.db.metrics
import loopsafe.fastapi
from loopsafe.db import Database, PoolBudget, PoolExhaustedError

from ..conftest import logged
from ..forking import in_child
from .conftest import raw_connection

TWO = PoolBudget(max_connections=2, processes=1, reserve=0)  # pool 1 + overflow 1


@pytest.fixture
async def database(postgres_url: str, db_name: str) -> AsyncIterator[Database]:
    db = Database(postgres_url, name=db_name, budget=TWO, engine_options={"pool_timeout": 5})
    yield db
    await db.aclose()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pool never reached the expected state within 10 s")


async def _hold(db: Database, release: asyncio.Event) -> None:
    async with db.session() as session:
        await session.execute(text("SELECT 1"))
        await release.wait()


async def test_pool_status_counts_waiting_checkouts_and_their_longest_wait(
    database: Database,
) -> None:
    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(database, release)) for _ in range(2)]
    await until(lambda: database.pool_status()["checked_out"] >= 2)
    waiter = asyncio.create_task(_hold(database, asyncio.Event()))
    await until(lambda: database.pool_status()["waiting"] >= 1)
    await asyncio.sleep(0.05)
    status = database.pool_status()
    assert (status["usage"], status["waiting"], status["capacity"]) == (1.0, 1, 2)
    assert status["longest_wait"] >= 0.05
    release.set()
    await asyncio.gather(*holders)
    await until(lambda: database.pool_status()["checked_out"] >= 1)  # the waiter got a connection
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    status = database.pool_status()
    assert (status["waiting"], status["longest_wait"], status["usage"]) == (0, 0.0, 0.0)
    assert set(status) >= {"loops", "pool_size", "max_overflow", "checked_out", "checked_in"}


async def test_pool_status_counts_only_connections_that_exist_under_a_hard_cap(
    postgres_url: str, db_name: str, app_name: str
) -> None:
    """Two threads' loops share a budget of 2 with 8 sessions: a checkout waiting for a budget
    slot is `waiting`, never `checked_out`, and the pool never reports more than the server has.

    SQLAlchemy counts a checkout before its connection exists; counted that way, most samples
    read 4 checked out (usage 2.0) while the server held 2.
    """
    db = Database(postgres_url, name=db_name, budget=TWO, engine_options={"pool_timeout": 10})
    start = threading.Barrier(3)

    def one_loop() -> None:
        async def one() -> None:
            async with db.session() as session:
                await session.execute(text("SELECT pg_sleep(0.05)"))

        async def main() -> None:
            await asyncio.gather(*(one() for _ in range(4)))
            await db.aclose()

        start.wait(10)
        asyncio.run(main())

    samples: list[tuple[dict[str, Any], int]] = []
    async with raw_connection(postgres_url) as raw:
        threads = [threading.Thread(target=one_loop) for _ in range(2)]
        for thread in threads:
            thread.start()
        await asyncio.to_thread(start.wait, 10)
        while any(thread.is_alive() for thread in threads):
            before = dict(db.pool_status())
            server = await raw.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name
            )
            after = dict(db.pool_status())
            samples.append((before, server))
            samples.append((after, server))
            await asyncio.sleep(0.005)
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)
    assert len(samples) >= 10, samples
    assert max(server for _, server in samples) <= 2
    assert any(status["waiting"] >= 1 for status, _ in samples), "no sample saw the cap bite"
    wrong = [
        status
        for status, _ in samples
        if status["checked_out"] > 2
        or status["usage"] > 1.0
        or status["checked_out"] + status["checked_in"] > 2
    ]
    assert wrong == [], f"{len(wrong)} of {len(samples)} samples over-report: {wrong[:3]}"
    assert any(status["checked_out"] == 2 for status, _ in samples)


async def test_pool_status_reports_the_budgeted_capacity_before_the_first_loop(
    postgres_url: str, db_name: str
) -> None:
    db = Database(postgres_url, name=db_name, budget=TWO)
    assert (db.pool_status()["loops"], db.pool_status()["capacity"]) == (0, 2)
    async with db.session() as session:
        await session.execute(text("SELECT 1"))
    assert (db.pool_status()["loops"], db.pool_status()["capacity"]) == (1, 2)
    await db.aclose()
    assert (db.pool_status()["loops"], db.pool_status()["capacity"]) == (0, 2)
    unbudgeted = Database(postgres_url, name=db_name, poolclass="null")
    assert unbudgeted.pool_status()["capacity"] == 0  # documented: unbounded


async def test_a_long_hold_and_sustained_usage_are_logged_with_the_code_path(
    postgres_url: str,
    db_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("LOOPSAFE_DB_HELD_ALERT", "0.05")
    monkeypatch.setenv("LOOPSAFE_DB_USAGE_ALERT", "0.5")
    monkeypatch.setenv("LOOPSAFE_DB_USAGE_ALERT_AFTER", "0.05")
    caplog.set_level(logging.INFO, logger="loopsafe")
    db = Database(postgres_url, name=db_name, budget=TWO)
    try:
        async with db.session() as first:  # usage 1/2: high from now on
            await first.execute(text("SELECT 1"))
            await asyncio.sleep(0.1)
            async with db.session() as second:  # still high 0.1 s later: pool_pressure
                await second.execute(text("SELECT 1"))
        # Rate-limited: a second long hold within the interval logs nothing more.
        async with db.session() as third:
            await third.execute(text("SELECT 1"))
            await asyncio.sleep(0.1)
    finally:
        await db.aclose()
    pressure = logged(caplog, "loopsafe.db.pool_pressure")
    held = logged(caplog, "loopsafe.db.connection_held")
    assert len(pressure) == 1
    assert pressure[0]["capacity"] == 2
    assert pressure[0]["database"] == db_name
    assert len(held) == 1
    assert held[0]["held_s"] >= 0.1
    assert "test_pressure.py" in held[0]["code"]


async def test_a_busy_one_connection_pool_alerts_only_when_a_checkout_waits(
    postgres_url: str,
    db_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Per-thread loops under a budget get one connection each: busy by design, not pressure."""
    monkeypatch.setenv("LOOPSAFE_DB_USAGE_ALERT_AFTER", "0.05")
    caplog.set_level(logging.INFO, logger="loopsafe")
    one_per_loop = PoolBudget(max_connections=2, processes=1, loops_per_process=2, reserve=0)
    db = Database(postgres_url, name=db_name, budget=one_per_loop)

    async def hold(seconds: float) -> None:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(seconds)

    try:
        for _ in range(4):  # usage 1/1 at every checkout, for 0.3 s: nobody waits, no alert
            await hold(0.1)
        assert db.pool_status()["capacity"] == 1
        assert logged(caplog, "loopsafe.db.pool_pressure") == []
        await asyncio.gather(*(hold(0.1) for _ in range(3)))  # two wait behind the first
    finally:
        await db.aclose()
    pressure = logged(caplog, "loopsafe.db.pool_pressure")
    assert len(pressure) == 1
    # One or both of the others: SQLAlchemy < 2.1 lets all three reach the queue before the first
    # takes its record, so the alert may come with the first checkout, two waiting behind it.
    assert pressure[0]["capacity"] == 1
    assert pressure[0]["waiting"] in (1, 2)


@pytest.mark.parametrize("variable", ["LOOPSAFE_DB_HELD_ALERT", "LOOPSAFE_DB_USAGE_ALERT"])
@pytest.mark.parametrize("value", ["soon", "0", "-1"])
def test_bad_alert_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        Database("postgresql://u@localhost/db")


async def test_prometheus_collector_exposes_gauges_and_the_wait_histogram(
    database: Database,
) -> None:
    registry = CollectorRegistry()
    loopsafe.db.metrics.register(registry)
    async with database.session() as session:
        await session.execute(text("SELECT 1"))
        exposition = generate_latest(registry).decode()
    labels = f'database="{database.name}"'
    line = next(
        x
        for x in exposition.splitlines()
        if x.startswith("loopsafe_db_pool_checked_out{") and labels in x
    )
    assert line.endswith(" 1.0")
    assert f"loopsafe_db_pool_capacity{{{labels}" in exposition
    assert f'loopsafe_db_checkout_wait_seconds_bucket{{{labels},le="0.001"' in exposition
    count = next(
        x
        for x in exposition.splitlines()
        if x.startswith("loopsafe_db_checkout_wait_seconds_count{") and labels in x
    )
    assert float(count.rsplit(" ", 1)[1]) >= 1


async def test_an_exhausted_pool_answers_503_with_retry_after(
    postgres_url: str, db_name: str
) -> None:
    db = Database(postgres_url, name=db_name, budget=TWO, engine_options={"pool_timeout": 0.2})
    app = FastAPI()
    loopsafe.fastapi.install(app, retry_after=2.5)

    @app.get("/count")
    async def count() -> dict[str, int]:
        async with db.session() as session:
            return {"n": (await session.execute(text("SELECT 1"))).scalar_one()}

    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(db, release)) for _ in range(2)]
    try:
        await until(lambda: db.pool_status()["checked_out"] >= 2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            busy = await client.get("/count")
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "3"
            assert busy.json()["error"] == "pool_exhausted"
            release.set()
            await asyncio.gather(*holders)
            assert (await client.get("/count")).json() == {"n": 1}  # nothing stays broken
    finally:
        release.set()
        await asyncio.gather(*holders, return_exceptions=True)
        await db.aclose()


@pytest.mark.parametrize("retry_after", [0, -1, "1", True])
def test_install_refuses_a_bad_retry_after(retry_after: object) -> None:
    with pytest.raises(ValueError, match="retry_after must be a number of seconds > 0"):
        loopsafe.fastapi.install(FastAPI(), retry_after=retry_after)  # type: ignore[arg-type]


async def test_default_retry_after_is_one_second() -> None:
    app = FastAPI()
    loopsafe.fastapi.install(app)

    @app.get("/")
    async def fail() -> None:
        raise PoolExhaustedError("No connection became free within pool_timeout=1 s: busy")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")


def test_a_forked_child_does_not_inherit_the_parents_waits() -> None:
    database = Database("postgresql://u@localhost/db")
    token = database._pressure.wait_started()  # a checkout of the parent, waiting
    seen = in_child(lambda: {"waiting": database.pool_status()["waiting"]})
    assert seen == {"waiting": 0}
    assert database.pool_status()["waiting"] == 1
    database._pressure.wait_ended(token)
    assert database.pool_status()["waiting"] == 0
