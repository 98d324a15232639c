"""install(app): pool checks at worker start, time limits for pools without them, signal wiring."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from celery import Celery, signals
from celery.concurrency.solo import TaskPool as SoloPool
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

import loopsafe.db
from loopsafe import LoopLocal
from loopsafe.celery import (
    UnsupportedPoolError,
    WorkerBudgetError,
    _run_async,
    _signals,
    async_task,
    close_all_loops,
    install,
    run_async,
)
from loopsafe.celery._pool import check_pool, pool_kind
from loopsafe.celery._signals import worker_budget_shape
from loopsafe.db import PoolBudget


class Conn:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.closed_in: list[asyncio.AbstractEventLoop] = []
        self.dropped = False

    async def aclose(self) -> None:
        self.closed_in.append(asyncio.get_running_loop())

    def drop(self) -> None:
        self.dropped = True


conn: LoopLocal[Conn] = LoopLocal(Conn, aclose=Conn.aclose, drop=Conn.drop, name="tests.conn")


async def get_conn() -> Conn:
    return conn.get()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """A Celery app for building (never starting) workers; what building them sets is undone."""
    from celery import _state

    monkeypatch.setattr(_signals, "_settings", _signals._WorkerSettings())
    # A worker built with loop="process" switches this process's run_async to a shared loop.
    monkeypatch.setattr(_run_async, "_settings", _run_async._Settings())
    # Building a worker's pool step marks the process as a worker: result.get() would then refuse
    # to block for every later test in this process.
    will_block = _state.task_join_will_block()
    application = Celery("loopsafe_install_tests", broker="memory://", set_as_current=False)
    application.conf.task_store_eager_result = False
    yield application
    application.close()
    _state._set_task_join_will_block(will_block)


@pytest.mark.parametrize(
    ("pool", "kind"),
    [
        ("prefork", "prefork"),
        ("processes", "prefork"),
        ("threads", "threads"),
        ("solo", "solo"),
        ("gevent", "gevent"),
        ("eventlet", "eventlet"),
        ("celery.concurrency.thread:TaskPool", "threads"),
        ("myproject.pools:CustomPool", "custom"),
        (SoloPool, "solo"),
    ],
)
def test_pool_kind_classifies_aliases_and_classes(pool: object, kind: str) -> None:
    assert pool_kind(pool) == kind


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_greenlet_pools_are_refused_when_the_worker_is_built(app: Celery, pool: str) -> None:
    install(app)
    with pytest.raises(UnsupportedPoolError, match=rf"does not support the {pool} pool.*--pool"):
        app.WorkController(app=app, pool_cls=pool, concurrency=1)


def test_check_pool_accepts_the_supported_pools() -> None:
    assert [check_pool(name) for name in ("prefork", "threads", "solo")] == [
        "prefork",
        "threads",
        "solo",
    ]


def test_install_twice_adds_one_bootstep(app: Celery) -> None:
    install(app)
    install(app)
    steps = [step for step in app.steps["worker"] if step.name == "loopsafe.celery.install"]
    assert len(steps) == 1


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     ("5", TypeError), (True, TypeError)],
    ids=repr,
)  # fmt: skip
def test_install_rejects_bad_default_timeouts(
    app: Celery, timeout: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"install\(\) default_timeout must be a .*number of seconds"):
        install(app, default_timeout=timeout)
    assert not [step for step in app.steps["worker"] if step.name == "loopsafe.celery.install"]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"loop": "fiber"}, ValueError, "loop must be 'thread' or 'process', got 'fiber'"),
        ({"loop_factory": 5}, TypeError, "loop_factory must make an event loop"),
        ({"blocked_after": 0}, ValueError, "blocked_after must be a finite number of seconds"),
        ({"drain_timeout": math.inf}, ValueError, "drain_timeout must be a finite number"),
    ],
    ids=str,
)
def test_install_rejects_bad_options_and_installs_nothing(
    app: Celery, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        install(app, **options)
    assert not [step for step in app.steps["worker"] if step.name == "loopsafe.celery.install"]


class CustomPool(SoloPool):  # type: ignore[misc]
    """A pool loopsafe knows nothing about."""


def test_process_loop_refuses_a_pool_it_does_not_know(app: Celery) -> None:
    install(app, loop="process")
    with pytest.raises(
        UnsupportedPoolError, match=r"loop='process'\) cannot serve the custom pool"
    ):
        app.WorkController(app=app, pool_cls=CustomPool, concurrency=4)
    assert _run_async.loop_settings()[0] is False  # run_async still runs on the thread's loop


@pytest.mark.parametrize(
    ("pool", "shared"),
    [("threads", True), ("prefork", False), ("solo", False), (CustomPool, False)],
)
def test_by_default_only_the_threads_pool_shares_one_loop(
    app: Celery, pool: object, shared: bool
) -> None:
    install(app)
    app.WorkController(app=app, pool_cls=pool, concurrency=4)
    assert _run_async.loop_settings()[0] is shared
    close_all_loops()


# --- time limits for pools that have none ---------------------------------------------------------


def _limited_tasks(app: Celery, cleanup: list[str]) -> dict[str, Any]:
    async def sleep_with_cleanup() -> str:
        try:
            await asyncio.sleep(0.5)
        finally:
            cleanup.append("cleaned up")
        return "slept"

    soft = async_task(app, name="soft", shared=False, soft_time_limit=0.1)(sleep_with_cleanup)
    hard = async_task(app, name="hard", shared=False, time_limit=0.1)(sleep_with_cleanup)
    plain = async_task(app, name="plain", shared=False)(sleep_with_cleanup)
    return {"soft": soft, "hard": hard, "plain": plain}


def test_threads_pool_gets_time_limits_from_run_async(app: Celery) -> None:
    install(app, default_timeout=0.1)
    app.WorkController(app=app, pool_cls="threads", concurrency=2)  # records the pool kind
    cleanup: list[str] = []
    tasks = _limited_tasks(app, cleanup)

    soft = tasks["soft"].apply()
    assert isinstance(soft.result, SoftTimeLimitExceeded)
    assert "soft_time_limit of 0.1 s" in str(soft.result)
    hard = tasks["hard"].apply()
    assert isinstance(hard.result, TimeLimitExceeded)
    plain = tasks["plain"].apply()
    assert isinstance(plain.result, TimeoutError)  # install's default_timeout
    assert cleanup == ["cleaned up"] * 3
    # Outside a task there is no budget left over from the last one.
    assert run_async(asyncio.sleep(0.2, result="free")) == "free"


def test_prefork_pool_keeps_celerys_own_time_limits(app: Celery) -> None:
    """Billiard enforces limits in prefork children: run_async must not enforce them twice."""
    install(app, default_timeout=0.1)
    app.WorkController(app=app, pool_cls="prefork", concurrency=2)
    cleanup: list[str] = []
    result = _limited_tasks(app, cleanup)["soft"].apply()
    assert result.result == "slept"


# --- signals ------------------------------------------------------------------------------------


def test_worker_process_init_without_a_fork_keeps_live_resources(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """The solo pool sends worker_process_init in the process that opened its pools."""
    caplog.set_level(logging.INFO, logger="loopsafe")
    install(app)
    before = run_async(get_conn())
    signals.worker_process_init.send(sender="solo@test")
    assert run_async(get_conn()) is before
    assert before.dropped is False
    events = [
        getattr(record, "loopsafe_fields", {})
        for record in caplog.records
        if getattr(record, "loopsafe_event", None) == "loopsafe.celery_process_init"
    ]
    assert events[-1]["reset"] is False


@pytest.mark.parametrize("signal_name", ["worker_shutdown", "worker_process_shutdown"])
def test_shutdown_signals_close_every_loop_inside_itself(app: Celery, signal_name: str) -> None:
    install(app)
    main = run_async(get_conn())
    parked = threading.Event()
    made: list[Conn] = []

    def idle_thread() -> None:
        made.append(run_async(get_conn()))
        parked.wait(30)  # alive, loop idle: closed from the signal's thread

    thread = threading.Thread(target=idle_thread)
    thread.start()
    try:
        while not made:
            thread.join(0.01)
        getattr(signals, signal_name).send(sender=None)
        assert main.closed_in == [main.loop]
        assert made[0].closed_in == [made[0].loop]
        assert main.loop.is_closed()
        assert made[0].loop.is_closed()
    finally:
        parked.set()
        thread.join()


# --- database budget ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "concurrency", "shape"),
    [("prefork", 4, (4, 1)), ("threads", 8, (1, 8)), ("solo", 1, (1, 1))],
)
def test_worker_budget_shape(kind: str, concurrency: int, shape: tuple[int, int]) -> None:
    assert worker_budget_shape(kind, concurrency) == shape


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("pool", "concurrency", "loop", "fails"),
    [
        ("prefork", 4, "thread", "in 4 process"),
        ("prefork", 2, "thread", None),
        ("threads", 8, "thread", "with 8 loop.*loop='process'"),
        ("threads", 8, "process", None),
        ("threads", 8, None, None),
    ],
)
def test_a_worker_the_budget_cannot_serve_fails_at_start_up(
    app: Celery,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    pool: str,
    concurrency: int,
    loop: Literal["thread", "process"] | None,
    fails: str | None,
) -> None:
    from loopsafe.db import _default

    monkeypatch.setattr(_default, "_default", _default._default)  # restored after the test
    loopsafe.db.configure(postgres_url, budget=PoolBudget(100, processes=2))
    install(app, loop=loop)
    if fails is None:
        app.WorkController(app=app, pool_cls=pool, concurrency=concurrency)
    else:
        with pytest.raises(WorkerBudgetError, match=rf"{fails}"):
            app.WorkController(app=app, pool_cls=pool, concurrency=concurrency)
    close_all_loops()


@pytest.mark.postgres
@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 4), ("threads", 8)])
def test_an_elastic_budget_serves_any_worker_shape(
    app: Celery, postgres_url: str, monkeypatch: pytest.MonkeyPatch, pool: str, concurrency: int
) -> None:
    """An elastic role has no process count: whatever the worker runs, leases bound it."""
    from loopsafe.db import BudgetPlan, Role, _default

    monkeypatch.setattr(_default, "_default", _default._default)  # restored after the test
    plan = BudgetPlan(4, {"worker": Role()}, 0, ledger="redis://127.0.0.1:1/0", name="shape")
    loopsafe.db.configure(postgres_url, budget=plan.budget_for("worker"))
    install(app)
    app.WorkController(app=app, pool_cls=pool, concurrency=concurrency)
    close_all_loops()
