"""Retries: checkout survives killed backends and restarts; transactions re-run only when it helps."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncSession

from loopsafe import LoopsafeError
from loopsafe.db import Database, PoolBudget, PoolExhaustedError
from loopsafe.db._retry import is_retryable_connect_error, is_retryable_transaction_error
from loopsafe.testing import EmbeddedPostgres, free_port

from ..conftest import logged
from .conftest import raw_connection, wait_for_connections

PUBLIC_PACKAGES = ("loopsafe", "loopsafe.db", "loopsafe.redis", "loopsafe.celery", "loopsafe.llm")


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


# What the server says, raised as it would raise it; only these SQLSTATEs are worth a re-run.
_RETRIED_STATES = ["08006", "57P01", "57P02", "57P03", "40001", "40P01"]
_FINAL_STATES = ["57014", "23505", "42501"]  # query_canceled, unique_violation, no privilege


@pytest.mark.parametrize(
    ("state", "calls_expected"),
    [(state, 2) for state in _RETRIED_STATES] + [(state, 1) for state in _FINAL_STATES],
)
async def test_only_connection_and_concurrency_states_are_retried(
    postgres_url: str, db_name: str, counter_table: str, state: str, calls_expected: int
) -> None:
    db = Database(postgres_url, name=db_name)
    calls = 0

    async def fails_once(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        await session.execute(text(f"UPDATE {counter_table} SET v = v + 1 WHERE id = 1"))
        if calls == 1:
            raise_state = f"DO $$BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{state}'; END$$"
            await session.execute(text(raise_state))
        return calls

    if calls_expected == 1:
        with pytest.raises(exc.DBAPIError, match="raised"):
            await db.run_in_transaction(fails_once)
    else:
        assert await db.run_in_transaction(fails_once) == 2
    assert calls == calls_expected
    async with raw_connection(postgres_url) as raw:
        # The failed attempt's update was rolled back; only a successful re-run's remains.
        assert await raw.fetchval(f"SELECT v FROM {counter_table} WHERE id = 1") == calls - 1


async def _times_out_during_a_query(session: AsyncSession, tmp_path: Path) -> None:
    async with asyncio.timeout(0.05):
        await session.execute(text("SELECT pg_sleep(5)"))


async def _fails_its_own_check(session: AsyncSession, tmp_path: Path) -> None:
    raise ValueError("not a database problem")


async def _reads_a_missing_file(session: AsyncSession, tmp_path: Path) -> None:
    (tmp_path / "missing.json").read_text()


async def _calls_a_service_that_refuses(session: AsyncSession, tmp_path: Path) -> None:
    await asyncio.open_connection("127.0.0.1", free_port())


async def _replaces_a_serialization_failure(session: AsyncSession, tmp_path: Path) -> None:
    try:
        await session.execute(
            text("DO $$BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END$$")
        )
    except exc.DBAPIError:
        raise ConnectionError("the application's own error, raised while handling one") from None


@pytest.mark.parametrize(
    ("application_step", "error"),
    [
        (_fails_its_own_check, ValueError),
        (_times_out_during_a_query, TimeoutError),
        (_reads_a_missing_file, FileNotFoundError),
        (_calls_a_service_that_refuses, ConnectionRefusedError),
        (_replaces_a_serialization_failure, ConnectionError),
    ],
)
async def test_the_applications_own_errors_run_fn_exactly_once(
    postgres_url: str,
    db_name: str,
    counter_table: str,
    tmp_path: Path,
    application_step: Callable[[AsyncSession, Path], Awaitable[None]],
    error: type[Exception],
) -> None:
    """fn's own errors, even a TimeoutError, OSError or ConnectionError, are not the database's:
    no re-run, and the transaction's writes are rolled back."""
    db = Database(postgres_url, name=db_name)
    calls = 0

    async def fn(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text(f"UPDATE {counter_table} SET v = v + 1 WHERE id = 1"))
        await application_step(session, tmp_path)

    with pytest.raises(error):
        await db.run_in_transaction(fn)
    assert calls == 1
    async with raw_connection(postgres_url) as raw:
        assert await raw.fetchval(f"SELECT v FROM {counter_table} WHERE id = 1") == 0


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


@pytest.mark.parametrize(
    ("driver", "error", "message"),
    [
        ("asyncpg", OSError, "Connect call failed"),
        ("psycopg", exc.OperationalError, "connection (failed|refused)"),
    ],
)
async def test_unreachable_server_fails_after_the_retries(
    private_postgres: EmbeddedPostgres,
    db_name: str,
    caplog: pytest.LogCaptureFixture,
    driver: str,
    error: type[Exception],
    message: str,
) -> None:
    url = private_postgres.url.replace(f":{private_postgres.port}/", ":1/")
    url = url.replace("postgresql://", f"postgresql+{driver}://", 1)
    db = Database(url, name=db_name, connect_retries=2)
    with (
        caplog.at_level(logging.WARNING, logger="loopsafe"),
        pytest.raises(error, match=message),
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


async def test_an_exhausted_budget_is_not_retried_as_a_connect_failure(
    postgres_url: str, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #20: PoolExhaustedError is an OSError (via TimeoutError) but never a transient fault.

    Retried, the error arrived after connect_retries × (pool_timeout + backoff) instead of after
    pool_timeout: 2.5 s for 0.3 s, about two minutes with the default 30 s.
    """
    budget = PoolBudget(max_connections=1, processes=1, reserve=0)
    db = Database(
        postgres_url,
        name=db_name,
        budget=budget,
        connect_retries=3,
        engine_options={"pool_timeout": 0.3},
    )
    try:
        async with db.session() as holder:  # the budget's one connection, held meanwhile
            await holder.execute(text("SELECT 1"))
            started = time.monotonic()
            with (
                caplog.at_level(logging.DEBUG, logger="loopsafe"),
                pytest.raises(PoolExhaustedError, match="PoolBudget"),
            ):
                async with db.session():
                    pass
            elapsed = time.monotonic() - started
        assert logged(caplog, "loopsafe.db.connect_retry") == []
        # Generous: one pool_timeout plus scheduling noise, far below the retried ~2.5 s.
        assert elapsed < 2.0, elapsed
    finally:
        await db.aclose()


async def test_an_exhausted_budget_is_not_rerun_by_run_in_transaction(
    postgres_url: str, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    budget = PoolBudget(max_connections=1, processes=1, reserve=0)
    db = Database(postgres_url, name=db_name, budget=budget, engine_options={"pool_timeout": 0.2})
    calls = 0

    async def work(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1

    try:
        async with db.session() as holder:
            await holder.execute(text("SELECT 1"))
            with (
                caplog.at_level(logging.DEBUG, logger="loopsafe"),
                pytest.raises(PoolExhaustedError),
            ):
                await db.run_in_transaction(work, retries=3)
        assert calls == 0  # the checkout failed before fn ran, once
        assert logged(caplog, "loopsafe.db.transaction_retry") == []
        assert logged(caplog, "loopsafe.db.connect_retry") == []
    finally:
        await db.aclose()


def _loopsafe_error_types() -> list[type[LoopsafeError]]:
    """Every LoopsafeError subclass loopsafe defines, in every package (imported so they exist)."""
    for package in PUBLIC_PACKAGES:
        importlib.import_module(package)
    found: list[type[LoopsafeError]] = []
    pending: list[type[LoopsafeError]] = [LoopsafeError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("loopsafe"):
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__qualname__)


LOOPSAFE_ERRORS = _loopsafe_error_types()
# Built-in and library bases that make an error look transient to a classifier.
TRANSIENT_LOOKING = (OSError, ConnectionResetError, ConnectionRefusedError, TimeoutError)


def _instance(cls: type[BaseException]) -> BaseException:
    try:
        return cls("boom")
    except TypeError:  # BoundExceededError takes its figures instead of a message
        return cls(1.0, 1.0, settled=True)  # type: ignore[call-arg]


@st.composite
def _loopsafe_errors(draw: st.DrawFn) -> BaseException:
    cls: type[BaseException] = draw(st.sampled_from(LOOPSAFE_ERRORS))
    extra = draw(st.sampled_from((None, *TRANSIENT_LOOKING)))
    if extra is not None and not issubclass(cls, extra):
        # A user's or a future subclass that adds a transient-looking base.
        with contextlib.suppress(TypeError):  # incompatible layouts cannot be combined
            cls = type(f"{cls.__name__}Plus{extra.__name__}", (cls, extra), {})
    return _instance(cls)


def _lost_connection(orig: BaseException) -> BaseException:
    return exc.DBAPIError("SELECT 1", None, orig, connection_invalidated=True)


def _wrap(inner: BaseException, how: str, outer: str) -> BaseException:
    wrapper: BaseException
    if outer == "dbapi_lost":
        wrapper = _lost_connection(inner if isinstance(inner, Exception) else Exception())
    elif outer == "operational":
        wrapper = exc.OperationalError("SELECT 1", None, inner)
    elif outer == "disconnection":
        wrapper = exc.DisconnectionError("gone")
    else:
        wrapper = {"oserror": OSError, "reset": ConnectionResetError, "timeout": TimeoutError}[
            outer
        ]("boom")
    if how == "cause":
        wrapper.__cause__ = inner
    else:
        wrapper.__context__ = inner
    return wrapper


@given(
    error=_loopsafe_errors(),
    wrappers=st.lists(
        st.tuples(
            st.sampled_from(("cause", "context")),
            st.sampled_from(
                ("dbapi_lost", "operational", "disconnection", "oserror", "reset", "timeout")
            ),
        ),
        max_size=3,
    ),
)
def test_no_loopsafe_error_is_ever_retried(
    error: BaseException, wrappers: list[tuple[str, str]]
) -> None:
    """Neither classifier retries a LoopsafeError, whatever its bases and however it is wrapped."""
    for how, outer in wrappers:
        error = _wrap(error, how, outer)
    assert not is_retryable_connect_error(error)
    assert not is_retryable_transaction_error(error)


@pytest.mark.parametrize(
    "outer", ["dbapi_lost", "operational", "disconnection", "oserror", "reset", "timeout"]
)
def test_the_same_wrappers_alone_are_retried(outer: str) -> None:
    """Control for the property above: its wrappers do look transient without a LoopsafeError."""
    error = _wrap(ValueError("not ours"), "context", outer)
    if outer in ("dbapi_lost", "disconnection"):
        assert is_retryable_transaction_error(error)
    assert is_retryable_connect_error(error)


def test_every_public_package_error_is_covered() -> None:
    """The property samples the whole tree, including errors defined outside loopsafe._errors."""
    names = {cls.__name__ for cls in LOOPSAFE_ERRORS}
    assert {"PoolExhaustedError", "WrongLoopError", "SubscriptionLostError"} <= names
