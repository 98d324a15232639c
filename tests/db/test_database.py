"""Database: one engine per loop, session semantics, disposal, pool status and options."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import loopsafe
import loopsafe.db
from loopsafe.db import Database, DatabaseNotConfiguredError, PoolBudget

from ..conftest import attach_a_new_loop
from .conftest import raw_connection, server_connections, wait_for_connections

SELECT_APP = text("SELECT current_setting('application_name')")


@pytest.mark.both_loops
async def test_get_engine_is_per_loop_and_lazy(postgres_url: str, db_name: str) -> None:
    db = Database(postgres_url, name=db_name)
    assert db.pool_status()["loops"] == 0  # nothing is created before first use
    engine = db.get_engine()
    assert isinstance(engine, AsyncEngine)
    assert db.get_engine() is engine
    assert engine.url.drivername == "postgresql+asyncpg"

    def other_loop() -> AsyncEngine:
        async def get() -> AsyncEngine:
            return db.get_engine()

        return asyncio.run(get())

    other = await asyncio.to_thread(other_loop)
    assert other is not engine


def test_get_engine_outside_a_loop_says_what_to_do(postgres_url: str, db_name: str) -> None:
    db = Database(postgres_url, name=db_name)
    with pytest.raises(loopsafe.NoRunningLoopError, match=r"asyncio\.run"):
        db.get_engine()


@pytest.mark.both_loops
async def test_session_commits_on_success(postgres_url: str, db_name: str, table: str) -> None:
    db = Database(postgres_url, name=db_name)
    async with db.session() as session:
        assert isinstance(session, AsyncSession)
        await session.execute(text(f"INSERT INTO {table} VALUES (1)"))
    async with raw_connection(postgres_url) as raw:
        assert await raw.fetchval(f"SELECT count(*) FROM {table}") == 1


@pytest.mark.both_loops
async def test_session_rolls_back_on_error_and_reraises(
    postgres_url: str, db_name: str, table: str
) -> None:
    db = Database(postgres_url, name=db_name)

    async def insert_then_fail() -> None:
        async with db.session() as session:
            await session.execute(text(f"INSERT INTO {table} VALUES (1)"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await insert_then_fail()
    async with db.session(commit=False) as session:
        await session.execute(text(f"INSERT INTO {table} VALUES (2)"))
    async with raw_connection(postgres_url) as raw:
        assert await raw.fetchval(f"SELECT count(*) FROM {table}") == 0
    # Both sessions gave their connection back.
    assert db.pool_status()["checked_out"] == 0


@pytest.mark.both_loops
async def test_session_closes_when_the_task_is_cancelled(postgres_url: str, db_name: str) -> None:
    db = Database(postgres_url, name=db_name)
    entered = asyncio.Event()

    async def hold() -> None:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await entered.wait()
    assert db.pool_status()["checked_out"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.pool_status()["checked_out"] == 0


async def test_application_name_defaults_to_the_database_name(
    postgres_url: str, db_name: str, app_name: str
) -> None:
    db = Database(postgres_url, name=db_name)
    async with db.session() as session:
        assert (await session.execute(SELECT_APP)).scalar() == app_name
        assert await server_connections(postgres_url, app_name) == 1


async def test_application_name_can_be_chosen(postgres_url: str, db_name: str) -> None:
    chosen = f"mine-{db_name}"
    db = Database(
        postgres_url,
        name=db_name,
        engine_options={"connect_args": {"server_settings": {"application_name": chosen}}},
    )
    async with db.session() as session:
        assert (await session.execute(SELECT_APP)).scalar() == chosen
    in_url = Database(f"{postgres_url}?application_name=url-{db_name}", name=db_name)
    async with in_url.session() as session:
        assert (await session.execute(SELECT_APP)).scalar() == f"url-{db_name}"


async def test_psycopg_urls_are_used_as_given(
    postgres_url: str, db_name: str, app_name: str
) -> None:
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    db = Database(url, name=db_name)
    assert db.get_engine().dialect.driver == "psycopg"
    async with db.session() as session:
        assert (await session.execute(SELECT_APP)).scalar() == app_name


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_bare_postgres_urls_mean_asyncpg(scheme: str) -> None:
    db = Database(f"{scheme}://u@h:5432/d")
    assert db.url.drivername == "postgresql+asyncpg"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url", "Not a database URL"),
        ("postgresql+psycopg2://u@h/d", "not an asyncio driver"),
        ("nosuchdb+nodriver://u@h/d", "cannot load the driver"),
    ],
)
def test_bad_urls_are_rejected_clearly(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Database(url)


def test_url_defaults_to_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatabaseNotConfiguredError, match="set the DATABASE_URL"):
        Database()
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@envhost/d")
    assert Database().url.host == "envhost"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": ""}, ValueError, "name must be a non-empty string"),
        ({"pooler": "statement"}, ValueError, "pooler must be"),
        ({"poolclass": "static"}, ValueError, "poolclass must be"),
        ({"connect_retries": -1}, ValueError, "connect_retries must be an int >= 0, got -1"),
        ({"connect_retries": 1.5}, TypeError, "connect_retries must be an int"),
        (
            {"connect_retries": True},
            TypeError,
            r"connect_retries must be an int, got True \(bool\)",
        ),
        ({"budget": 10}, TypeError, "budget must be a loopsafe.db.PoolBudget"),
        ({"engine_options": {"poolclass": object}}, ValueError, "poolclass='queue' or 'null'"),
        ({"engine_options": [("echo", True)]}, TypeError, "engine_options must be a mapping"),
        ({"engine_options": {"connect_args": 1}}, TypeError, "connect_args'] must be a mapping"),
        ({"engine_options": {"pool_timeout": 0}}, ValueError, "pool_timeout'] must be a finite"),
        (
            {"engine_options": {"pool_timeout": float("nan")}},
            ValueError,
            r"pool_timeout'\] must be a finite number of seconds > 0, got nan",
        ),
        ({"engine_options": {"pool_timeout": float("inf")}}, ValueError, "got inf"),
        ({"engine_options": {"pool_timeout": True}}, TypeError, "got True"),
        (
            {"budget": PoolBudget(10, 1), "engine_options": {"pool_size": 3}},
            ValueError,
            "conflicts with budget",
        ),
        ({"poolclass": "null", "engine_options": {"max_overflow": 3}}, ValueError, "no meaning"),
        (
            {"engine_options": {"pool_size": "5"}},
            TypeError,
            r"engine_options\['pool_size'\] must be a whole number, got '5'",
        ),
        ({"engine_options": {"max_overflow": 2.5}}, TypeError, "max_overflow'] must be a whole"),
        ({"session_options": {"bind": None}}, ValueError, "cannot bind sessions"),
        ({"session_options": 3}, TypeError, "session_options must be a mapping"),
    ],
)
def test_bad_options_are_rejected_clearly(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Database("postgresql://u@h/d", **kwargs)


def test_transaction_pooler_needs_a_driver_it_knows() -> None:
    with pytest.raises(ValueError, match="knows how to configure asyncpg and psycopg"):
        Database("sqlite+aiosqlite:///:memory:", pooler="transaction")


def test_sequential_asyncio_runs_leave_no_connection_behind(
    postgres_url: str, db_name: str, app_name: str
) -> None:
    """300 asyncio.run() calls, each with its own engine: every one disposed inside its loop."""
    db = Database(postgres_url, name=db_name)

    async def once() -> int:
        async with db.session() as session:
            value: int = (await session.execute(text("SELECT 1"))).scalar_one()
        return value

    for _ in range(300):
        assert asyncio.run(once()) == 1
    assert db.pool_status()["loops"] == 0
    gc.collect()  # any unclosed connection would warn here, and warnings are errors
    assert asyncio.run(wait_for_connections(postgres_url, app_name, 0)) == 0
    disposed = next(row for row in loopsafe.stats() if row["name"] == f"loopsafe.db:{db_name}")
    assert disposed["created"] == 300
    assert disposed["closed"] == 300
    assert disposed["abandoned"] == 0


def test_a_loop_end_logs_one_loopsafe_line_at_info_and_nothing_from_the_pool(
    postgres_url: str, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An application showing loopsafe's INFO events sees `engine_created` per loop, nothing
    more: SQLAlchemy's "Pool disposed" / "Pool recreating" stay under `sqlalchemy.pool`."""
    caplog.set_level(logging.DEBUG, logger="loopsafe")
    db = Database(postgres_url, name=db_name)

    async def once() -> None:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))

    asyncio.run(once())
    loud = [
        (record.name, record.getMessage())
        for record in caplog.records
        if record.levelno >= logging.INFO and record.name.startswith("loopsafe")
    ]
    assert [message.split()[0] for _, message in loud] == ["loopsafe.db.engine_created"], loud
    # Still SQLAlchemy's to show, as for any of its pools (echo_pool, the sqlalchemy.pool logger).
    pool_lines = [record for record in caplog.records if "Pool disposed" in record.getMessage()]
    assert pool_lines == []
    caplog.clear()
    caplog.set_level(logging.INFO, logger="sqlalchemy.pool")
    asyncio.run(once())
    assert any(
        record.name.startswith("sqlalchemy.pool") and "Pool disposed" in record.getMessage()
        for record in caplog.records
    )


def test_loop_closed_without_shutdown_drops_its_connections(
    postgres_url: str,
    db_name: str,
    app_name: str,
    caplog: pytest.LogCaptureFixture,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """No asyncio.run: the loop is just closed. Its engine's sockets close without warnings."""
    db = Database(postgres_url, name=db_name)

    async def use() -> None:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))

    loop = loop_factory()
    loop.run_until_complete(use())
    if isinstance(loop, asyncio.BaseEventLoop):
        loop.close()
        assert asyncio.run(server_connections(postgres_url, app_name)) == 1
    else:
        # uvloop closes every open transport itself inside close() and warns about each; under
        # `-W error` that warning aborts its close walk and close() never returns (uvloop bug),
        # so the warning is expected here rather than escalated.
        with pytest.warns(ResourceWarning, match="unclosed resource <TCPTransport"):
            loop.close()
    with caplog.at_level(logging.INFO, logger="loopsafe"):
        del loop
        gc.collect()
        attach_a_new_loop()  # where loops that closed without disposal are collected
    assert db.pool_status()["loops"] == 0
    assert "loopsafe.db.engine_dropped" in caplog.text
    assert asyncio.run(wait_for_connections(postgres_url, app_name, 0)) == 0
    gc.collect()


@pytest.mark.both_loops
async def test_aclose_disposes_this_loops_engine(
    postgres_url: str, db_name: str, app_name: str
) -> None:
    db = Database(postgres_url, name=db_name)
    first = db.get_engine()
    async with db.session() as session:
        await session.execute(text("SELECT 1"))
    assert await server_connections(postgres_url, app_name) == 1
    await db.aclose()
    assert await wait_for_connections(postgres_url, app_name, 0) == 0
    assert db.get_engine() is not first


async def test_pool_status_sums_over_loops(postgres_url: str, db_name: str) -> None:
    db = Database(postgres_url, name=db_name, budget=PoolBudget(12, 1, loops_per_process=2))
    assert db.pool_status() == {
        "loops": 0,
        "pool_size": 0,
        "max_overflow": 0,
        "checked_out": 0,
        "checked_in": 0,
        "overflow": 0,
        "capacity": 10,  # the budgeted share, before any loop too (0 would mean unbounded)
        "usage": 0.0,
        "waiting": 0,
        "longest_wait": 0.0,
    }
    release = threading.Event()
    held = threading.Event()

    def other_loop() -> None:
        async def hold() -> None:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
                held.set()
                await asyncio.to_thread(release.wait, 30)

        asyncio.run(hold())

    thread = threading.Thread(target=other_loop)
    thread.start()
    try:
        await asyncio.to_thread(held.wait, 30)
        sessions = [db.session() for _ in range(4)]
        opened = [await cm.__aenter__() for cm in sessions]
        for session in opened:
            await session.execute(text("SELECT 1"))
        status = db.pool_status()
        # budget: 10 usable, 2 loops → 5 per loop = pool 3 + overflow 2
        assert status == {
            "loops": 2,
            "pool_size": 6,
            "max_overflow": 4,
            "checked_out": 5,
            "checked_in": 0,
            "overflow": 1,
            "capacity": 10,
            "usage": 0.5,
            "waiting": 0,
            "longest_wait": 0.0,
        }
        for cm in sessions:
            await cm.__aexit__(None, None, None)
        assert db.pool_status()["checked_in"] == 3  # the overflow connection was closed
    finally:
        release.set()
        await asyncio.to_thread(thread.join)
    assert db.pool_status()["loops"] == 1


async def test_null_pool_opens_a_connection_per_session(
    postgres_url: str, db_name: str, app_name: str
) -> None:
    db = Database(postgres_url, name=db_name, poolclass="null")
    pids = set()
    for _ in range(2):
        async with db.session() as session:
            pids.add((await session.execute(text("SELECT pg_backend_pid()"))).scalar())
            assert db.pool_status()["checked_out"] == 1
    assert len(pids) == 2
    assert db.pool_status() == {
        "loops": 1,
        "pool_size": 0,
        "max_overflow": 0,
        "checked_out": 0,
        "checked_in": 0,
        "overflow": 0,
        "capacity": 0,
        "usage": 0.0,
        "waiting": 0,
        "longest_wait": 0.0,
    }
    assert await wait_for_connections(postgres_url, app_name, 0) == 0


async def test_passwords_never_reach_logs_or_reprs(
    postgres_url: str, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Pa55"
    url = postgres_url.replace("://", f"://{_user(postgres_url)}:{secret}@", 1).replace(
        f"{_user(postgres_url)}@", "", 1
    )
    assert secret in url
    db = Database(url, name=db_name)
    unreachable = Database(
        url.replace(f":{_port(postgres_url)}/", ":1/", 1), name=f"{db_name}x", connect_retries=1
    )
    with caplog.at_level(logging.DEBUG):
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
        with pytest.raises(OSError, match="Connect call failed") as failure:
            async with unreachable.session():
                pass
    texts = [
        caplog.text,
        repr(db),
        str(db.url),
        repr(db.url),
        repr(db.get_engine()),
        str(failure.value),
        repr(unreachable),
    ]
    assert "loopsafe.db.connect_retry" in caplog.text
    assert "loopsafe.db.engine_created" in caplog.text
    for shown in texts:
        assert secret not in shown
    assert "***" in repr(db)


def _user(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0]


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/", 1)[0]


def test_a_missing_driver_fails_at_construction_naming_the_extra() -> None:
    code = """
import sys
sys.modules["asyncpg"] = None  # as if the driver were not installed
import loopsafe.db
try:
    loopsafe.db.Database("postgresql://user@localhost/app")
except ImportError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "loopsafe.db Database 'default' uses the asyncpg driver, which is not installed: "
        "pip install 'loopsafe[db]'"
    )
