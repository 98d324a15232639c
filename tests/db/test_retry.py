"""Retries: checkout survives killed backends and restarts; transactions re-run only when it helps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncSession

from loopsafe.db import Database
from loopsafe.testing import EmbeddedPostgres

from .conftest import raw_connection, wait_for_connections


@pytest.fixture
async def counter_table(postgres_url: str, db_name: str) -> AsyncIterator[str]:
    """A one-row table ``(id, v)`` unique to this test."""
    table = f"counter_{db_name}"
    async with raw_connection(postgres_url) as raw:
        await raw.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
        await raw.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
        try:
            yield table
        finally:
            await raw.execute(f"DROP TABLE {table}")


async def _backend_pid(session: AsyncSession) -> int:
    pid: int = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def _terminate(postgres_url: str, pid: int) -> None:
    """Kill backend `pid` and wait until the server has let it go."""
    async with raw_connection(postgres_url) as raw:
        assert await raw.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(200):
            if not await raw.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} did not exit")


async def test_serialization_failure_is_retried(
    postgres_url: str, db_name: str, counter_table: str
) -> None:
    db = Database(postgres_url, name=db_name, engine_options={"isolation_level": "REPEATABLE READ"})
    both_read = asyncio.Barrier(2)
    calls = 0

    async def increment(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        v: int = (
            await session.execute(text(f"SELECT v FROM {counter_table} WHERE id = 1"))
        ).scalar_one()
        if calls <= 2:  # first attempts: make sure both saw the same snapshot
            await both_read.wait()
        await session.execute(text(f"UPDATE {counter_table} SET v = :v WHERE id = 1"), {"v": v + 1})
        return v + 1

    results = await asyncio.gather(
        db.run_in_transaction(increment), db.run_in_transaction(increment)
    )
    assert sorted(results) == [1, 2]  # no lost update
    assert calls == 3  # exactly one re-run
    async with raw_connection(postgres_url) as raw:
        assert await raw.fetchval(f"SELECT v FROM {counter_table} WHERE id = 1") == 2


async def test_deadlock_is_retried(postgres_url: str, db_name: str, counter_table: str) -> None:
    db = Database(postgres_url, name=db_name)
    both_locked = asyncio.Barrier(2)
    attempts: list[int] = []

    def lock_in_order(first: int, second: int):  # type: ignore[no-untyped-def]
        async def work(session: AsyncSession) -> None:
            attempts.append(first)
            update = text(f"UPDATE {counter_table} SET v = v + 1 WHERE id = :id")
            await session.execute(update, {"id": first})
            if len(attempts) <= 2:
                await both_locked.wait()
            await session.execute(update, {"id": second})

        return work

    await asyncio.gather(
        db.run_in_transaction(lock_in_order(1, 2)), db.run_in_transaction(lock_in_order(2, 1))
    )
    assert len(attempts) == 3
    async with raw_connection(postgres_url) as raw:
        assert await raw.fetchval(f"SELECT sum(v) FROM {counter_table}") == 4


@pytest.mark.both_loops
async def test_lost_connection_is_retried(postgres_url: str, db_name: str) -> None:
    db = Database(postgres_url, name=db_name)
    calls = 0

    async def dies_once(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return await _backend_pid(session)

    assert await db.run_in_transaction(dies_once) > 0
    assert calls == 2


async def test_other_errors_are_never_retried(
    postgres_url: str, db_name: str, counter_table: str
) -> None:
    db = Database(postgres_url, name=db_name)
    calls = 0

    async def duplicate_key(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text(f"INSERT INTO {counter_table} VALUES (1, 0)"))

    with pytest.raises(exc.IntegrityError, match="duplicate key"):
        await db.run_in_transaction(duplicate_key)
    assert calls == 1

    async def application_error(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not a database problem")

    with pytest.raises(ValueError, match="not a database problem"):
        await db.run_in_transaction(application_error)
    assert calls == 2


async def test_retries_run_out(postgres_url: str, db_name: str) -> None:
    db = Database(postgres_url, name=db_name)
    calls = 0

    async def always_dies(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    with pytest.raises(exc.DBAPIError):
        await db.run_in_transaction(always_dies, retries=1)
    assert calls == 2


@pytest.mark.parametrize(
    ("retries", "error", "match"),
    [
        (-1, ValueError, "retries must be an int >= 0, got -1"),
        (1.5, TypeError, r"retries must be an int, got 1\.5 \(float\)"),
        (True, TypeError, r"retries must be an int, got True \(bool\)"),
    ],
)
async def test_bad_retries_are_rejected(
    postgres_url: str, retries: object, error: type[Exception], match: str
) -> None:
    calls = 0

    async def counted(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(error, match=match):
        await Database(postgres_url).run_in_transaction(counted, retries=retries)  # type: ignore[arg-type]
    assert calls == 0  # refused before anything ran


@pytest.mark.both_loops
async def test_checkout_replaces_a_pooled_connection_whose_backend_was_killed(
    postgres_url: str, db_name: str
) -> None:
    db = Database(postgres_url, name=db_name)
    async with db.session() as session:
        killed = await _backend_pid(session)
    await _terminate(postgres_url, killed)
    # The backend leaves pg_stat_activity a moment before its socket closes; give the close time
    # to arrive, staying well inside PING_AFTER_IDLE so the no-ping checkout path is the one tested.
    await asyncio.sleep(0.1)
    async with db.session() as session:
        assert await _backend_pid(session) != killed


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of our own, to stop and restart."""
    with EmbeddedPostgres(max_connections=20) as server:
        yield server


@pytest.mark.both_loops
async def test_checkout_survives_a_server_restart(
    private_postgres: EmbeddedPostgres, db_name: str, app_name: str
) -> None:
    db = Database(private_postgres.url, name=db_name)
    async with db.session() as session:
        before = await _backend_pid(session)
    # Blocking on purpose: the loop does not run while the server restarts, so the pooled
    # connection's death is only found out at checkout.
    private_postgres.restart()
    async with db.session() as session:
        assert await _backend_pid(session) != before
    assert await wait_for_connections(private_postgres.url, app_name, 1) == 1


async def test_checkout_waits_for_a_server_that_is_starting(
    private_postgres: EmbeddedPostgres, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(private_postgres.url, name=db_name, connect_retries=8)
    private_postgres.stop()
    starting = asyncio.create_task(asyncio.to_thread(private_postgres.start))
    try:
        with caplog.at_level(logging.WARNING, logger="loopsafe"):
            async with db.session() as session:
                assert await _backend_pid(session) > 0
    finally:
        await starting
    assert "loopsafe.db.connect_retry" in caplog.text


async def test_unreachable_server_fails_after_the_retries(
    private_postgres: EmbeddedPostgres, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = private_postgres.url.replace(f":{private_postgres.port}/", ":1/")
    db = Database(url, name=db_name, connect_retries=2)
    with (
        caplog.at_level(logging.WARNING, logger="loopsafe"),
        pytest.raises(OSError, match="Connect call failed"),
    ):
        async with db.session():
            pass
    assert caplog.text.count("loopsafe.db.connect_retry") == 2


async def test_permanent_connect_errors_are_not_retried(
    private_postgres: EmbeddedPostgres, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = private_postgres.url.rsplit("/", 1)[0] + "/no_such_database"
    db = Database(url, name=db_name, connect_retries=3)
    with (
        caplog.at_level(logging.WARNING, logger="loopsafe"),
        pytest.raises(Exception, match="no_such_database"),
    ):
        async with db.session():
            pass
    assert "loopsafe.db.connect_retry" not in caplog.text
