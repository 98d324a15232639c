"""run_async: persistent per-thread loops, helper threads, cancellation, fork and loop shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loopsafe import LoopLocal, close_all_loops, close_thread_loop, run_async
from loopsafe._bridge import _limits, _run_async, _runner
from tests.bridge.conftest import eventually
from tests.conftest import LOOP_FACTORIES

from ..forking import FORKS, in_child

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class Resource:
    """A loop-local resource that records where it was made and where it was closed."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.current_thread().name
        self.pid = os.getpid()
        self.closed_in: list[asyncio.AbstractEventLoop] = []

    async def aclose(self) -> None:
        self.closed_in.append(asyncio.get_running_loop())


resource: LoopLocal[Resource] = LoopLocal(Resource, aclose=Resource.aclose, name="tests.resource")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


class JobFailed(Exception):
    """A picklable application error with arguments, as result backends store them."""

    def __init__(self, job: str, code: int) -> None:
        super().__init__(job, code)
        self.job = job
        self.code = code


class Interrupt(Exception):
    """What a signal handler raises in these tests (as Celery's soft time limit does)."""


async def use_resource() -> Resource:
    await asyncio.sleep(0)
    return resource.get()


async def other_tasks() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks() if task is not current]


@pytest.fixture(params=list(LOOP_FACTORIES))
def run_async_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with run_async's loops made by each loop implementation in turn."""
    close_all_loops()
    monkeypatch.setattr(_run_async._settings, "loop_factory", LOOP_FACTORIES[request.param])
    return str(request.param)


@pytest.fixture
def alarm() -> Iterator[Callable[[float, type[BaseException]], None]]:
    """Arm SIGALRM to raise an exception in the main thread after a delay."""
    previous = signal.getsignal(signal.SIGALRM)

    def arm(seconds: float, exc_type: type[BaseException]) -> None:
        def handler(signum: int, frame: object) -> None:
            raise exc_type("raised by a signal handler")

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# --- the persistent loop -------------------------------------------------------------------------


def test_calls_share_one_persistent_loop_so_resources_stay_pooled(run_async_loop: str) -> None:
    first = run_async(use_resource())
    second = run_async(use_resource())
    assert first is second
    assert not first.loop.is_closed()
    assert first.closed_in == []
    assert run_async(asyncio.sleep(0, result="value")) == "value"


def test_each_thread_gets_its_own_loop_and_resources() -> None:
    mine = run_async(use_resource())
    theirs: list[Resource] = []
    worker = threading.Thread(target=lambda: theirs.append(run_async(use_resource())))
    worker.start()
    worker.join()
    assert theirs[0] is not mine
    assert theirs[0].loop is not mine.loop
    assert theirs[0].thread == worker.name


def test_loop_of_a_thread_that_ended_is_closed_cleanly(run_async_loop: str) -> None:
    made: list[Resource] = []
    worker = threading.Thread(target=lambda: made.append(run_async(use_resource())))
    worker.start()
    worker.join()
    (res,) = made
    eventually(lambda: res.loop.is_closed(), "the ended thread's loop is closed")
    assert res.closed_in == [res.loop]  # closed inside its own loop, not dropped
    assert res.loop not in [record.loop for record in _runner._records]


def test_close_thread_loop_closes_resources_inside_their_loop(run_async_loop: str) -> None:
    res = run_async(use_resource())
    assert close_thread_loop() is True
    assert res.closed_in == [res.loop]
    assert res.loop.is_closed()
    assert close_thread_loop() is False  # nothing left to close
    fresh = run_async(use_resource())
    assert fresh is not res
    assert fresh.loop is not res.loop


def test_closing_cancels_leftover_tasks_before_closing_resources() -> None:
    events: list[str] = []

    class Tracked(Resource):
        async def aclose(self) -> None:
            events.append("resource closed")

    tracked = LoopLocal(Tracked, aclose=Tracked.aclose, name="tests.tracked")

    async def background() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            events.append("leftover cleaned up")

    async def start_background() -> None:
        tracked.get()
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)

    run_async(start_background())
    assert close_all_loops() == 1
    assert events == ["leftover cleaned up", "resource closed"]


async def test_close_all_loops_works_from_async_code() -> None:
    res = await asyncio.to_thread(lambda: run_async(use_resource()))
    # to_thread's worker thread lives on in the default executor: its loop is closed from here.
    assert close_all_loops() >= 1
    assert res.closed_in == [res.loop]


# --- what crosses the boundary -------------------------------------------------------------------


def test_contextvars_are_copied_in_and_changes_stay_inside() -> None:
    async def read_and_change() -> str:
        seen = request_id.get()
        request_id.set("changed inside")
        return seen

    token = request_id.set("req-42")
    try:
        assert run_async(read_and_change()) == "req-42"
        assert request_id.get() == "req-42"
    finally:
        request_id.reset(token)


async def _fail(job: str) -> None:
    await asyncio.sleep(0)
    raise JobFailed(job, 7)


def test_exceptions_keep_type_traceback_and_picklability() -> None:
    with pytest.raises(JobFailed) as caught:
        run_async(_fail("report"))
    exc = caught.value
    assert (exc.job, exc.code) == ("report", 7)
    frames = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    assert "_fail" in frames  # the coroutine's own frame, not just run_async's
    restored = pickle.loads(pickle.dumps(exc))
    assert type(restored) is JobFailed
    assert (restored.job, restored.code) == ("report", 7)


def _future() -> asyncio.Future[Any]:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    loop.close()
    return future


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: use_resource, r"call the coroutine function: run_async\(use_resource\(\.\.\.\)\)"),
        (_future, r"a Future or Task belongs to the loop that created it"),
        (lambda: None, r"expects a coroutine object, got NoneType"),
        (lambda: 42, r"got int: pass the result of calling an `async def` function"),
        (lambda: (x for x in range(0)), r"got generator"),
    ],
    ids=["coroutine-function", "future", "none", "int", "generator"],
)
def test_non_coroutines_are_rejected_with_a_clear_error(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        run_async(make())


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1.5, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     ("5", TypeError), (True, TypeError)],
    ids=repr,
)  # fmt: skip
def test_bad_timeouts_are_rejected(timeout: Any, error: type[Exception]) -> None:
    coro = asyncio.sleep(0)
    with pytest.raises(error, match=r"run_async timeout must be a .*number of seconds"):
        run_async(coro, timeout=timeout)
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"  # never run, no "never awaited"


# --- timeouts and interruptions ------------------------------------------------------------------


async def _sleep_with_cleanup(cleanup: list[str], seconds: float = 30) -> None:
    try:
        await asyncio.sleep(seconds)
    finally:
        cleanup.append("cleaned up")


def test_timeout_cancels_the_coroutine_after_its_cleanup(run_async_loop: str) -> None:
    cleanup: list[str] = []
    with pytest.raises(TimeoutError, match=r"_sleep_with_cleanup\(\) did not finish within 0.2 s"):
        run_async(_sleep_with_cleanup(cleanup), timeout=0.2)
    assert cleanup == ["cleaned up"]
    assert run_async(other_tasks()) == []
    assert run_async(asyncio.sleep(0, result=1), timeout=5) == 1  # the loop still serves


def test_cleanup_after_a_timeout_is_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_limits, "DEFAULT_CLEANUP_TIMEOUT", 0.05)
    caplog.set_level(logging.WARNING, logger="loopsafe")

    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(5)  # overruns the cleanup bound

    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
        run_async(slow_cleanup(), timeout=0.05)
    events = [getattr(record, "loopsafe_event", None) for record in caplog.records]
    assert "loopsafe.run_async_cleanup_timeout" in events


def test_a_coroutine_that_swallows_the_timeout_still_times_out() -> None:
    """Past its bound a call fails, whatever the coroutine made of the cancellation."""
    finished: list[str] = []

    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            finished.append("swallowed the cancellation")
            return "finished anyway"
        return "not reached"

    with pytest.raises(TimeoutError, match=r"stubborn\(\) did not finish within 0.05 s"):
        run_async(stubborn(), timeout=0.05)
    assert finished == ["swallowed the cancellation"]


@pytest.mark.parametrize("exc_type", [Interrupt, KeyboardInterrupt])
def test_exception_raised_in_the_waiting_thread_cancels_the_coroutine(
    run_async_loop: str,
    alarm: Callable[[float, type[BaseException]], None],
    exc_type: type[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if run_async_loop == "uvloop" and exc_type is Interrupt:
        # uvloop runs Python signal handlers inside a loop callback, where asyncio semantics
        # swallow an Exception: such types must be registered (install() does it for Celery's).
        monkeypatch.setattr(_limits, "_interrupt_types", (Interrupt,))
    cleanup: list[str] = []
    alarm(0.2, exc_type)
    with pytest.raises(exc_type, match="raised by a signal handler"):
        run_async(_sleep_with_cleanup(cleanup))
    assert cleanup == ["cleaned up"]
    assert run_async(other_tasks()) == []  # nothing orphaned on the loop


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_signal_exception_inside_a_loop_callback_still_reaches_the_caller(
    run_async_loop: str,
    alarm: Callable[[float, type[BaseException]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio only logs exceptions from plain callbacks: registered interrupts are delivered."""
    monkeypatch.setattr(_limits, "_interrupt_types", ())
    _limits.register_interrupt(Interrupt)
    cleanup: list[str] = []

    async def busy_callback_then_sleep() -> None:
        asyncio.get_running_loop().call_soon(_spin, 5.0)
        await _sleep_with_cleanup(cleanup)

    alarm(0.2, Interrupt)
    with pytest.raises(Interrupt, match="raised by a signal handler"):
        run_async(busy_callback_then_sleep())
    assert cleanup == ["cleaned up"]
    assert run_async(other_tasks()) == []


def test_task_deadline_limits_calls_without_their_own_timeout() -> None:
    def make_error(what: str, seconds: float) -> BaseException:
        return Interrupt(f"{what} over budget of {seconds:g} s")

    cleanup: list[str] = []
    _limits.set_thread_deadline(0.2, make_error)
    try:
        assert run_async(asyncio.sleep(0, result="quick")) == "quick"
        with pytest.raises(Interrupt, match=r"_sleep_with_cleanup\(\) over budget of 0.2 s"):
            run_async(_sleep_with_cleanup(cleanup))
        assert cleanup == ["cleaned up"]
        # The budget is spent: a later call in the same task fails at once, without running.
        with pytest.raises(Interrupt, match="over budget"):
            run_async(_sleep_with_cleanup(cleanup))
        assert cleanup == ["cleaned up"]
    finally:
        _limits.set_thread_deadline(None)
    assert run_async(asyncio.sleep(0.3, result="no budget now")) == "no budget now"


# --- where a loop is already running -------------------------------------------------------------


@pytest.mark.both_loops
async def test_called_where_a_loop_runs_it_uses_a_persistent_helper_thread() -> None:
    token = request_id.set("from-async")
    try:

        async def where() -> tuple[Resource, str]:
            return resource.get(), request_id.get()

        def sync_library_call() -> tuple[Resource, str]:
            return run_async(where())

        first, seen = sync_library_call()
        second, _ = sync_library_call()
    finally:
        request_id.reset(token)
    assert first.thread == "loopsafe-run-async-helper-0"
    assert first.loop is not asyncio.get_running_loop()
    assert second is first  # the helper's loop is persistent too
    assert seen == "from-async"


@pytest.mark.both_loops
async def test_helper_thread_calls_keep_exceptions_and_timeouts() -> None:
    with pytest.raises(JobFailed) as caught:
        run_async(_fail("helper"))
    assert caught.value.job == "helper"
    cleanup: list[str] = []
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.1 s"):
        run_async(_sleep_with_cleanup(cleanup), timeout=0.1)
    assert cleanup == ["cleaned up"]


async def test_exception_in_the_waiting_thread_cancels_the_helper_coroutine(
    alarm: Callable[[float, type[BaseException]], None],
) -> None:
    cleanup: list[str] = []
    alarm(0.2, Interrupt)
    with pytest.raises(Interrupt):
        run_async(_sleep_with_cleanup(cleanup))
    assert cleanup == ["cleaned up"]


def test_nested_run_async_from_the_persistent_loop_does_not_deadlock() -> None:
    async def inner() -> str:
        return threading.current_thread().name

    def sync_helper() -> str:
        return run_async(inner())

    async def outer() -> tuple[str, str]:
        return threading.current_thread().name, sync_helper()

    outer_thread, inner_thread = run_async(outer(), timeout=10)
    assert outer_thread == threading.current_thread().name
    assert inner_thread == "loopsafe-run-async-helper-0"


def test_unbounded_nesting_fails_clearly() -> None:
    async def recurse() -> None:
        run_async(recurse())

    with pytest.raises(RuntimeError, match=r"nested 8 deep .* await the coroutine directly"):
        run_async(recurse(), timeout=30)


# --- loop_factory and the shared process loop ------------------------------------------------------


@pytest.mark.parametrize("name", list(LOOP_FACTORIES))
def test_loop_factory_makes_the_thread_loop_without_a_policy(name: str) -> None:
    made = run_async(use_resource(), loop_factory=LOOP_FACTORIES[name])
    assert type(made.loop).__module__.partition(".")[0] == name  # asyncio.… or uvloop.…
    # The thread's loop is kept: a later call with another factory runs on it.
    assert run_async(use_resource(), loop_factory=asyncio.new_event_loop) is made


@pytest.fixture(params=list(LOOP_FACTORIES))
def process_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """run_async as in a ``loop="process"`` worker: one shared loop thread, each loop type."""
    monkeypatch.setattr(_run_async, "_settings", _run_async._Settings())
    _run_async.set_loop_factory(LOOP_FACTORIES[request.param])
    _run_async.use_process_loop(True, blocked_after=0.2)
    yield str(request.param)
    close_all_loops()


def test_threads_share_the_process_loop_and_run_concurrently(process_loop: str) -> None:
    barrier = threading.Barrier(4)
    seen: list[tuple[Resource, str]] = []

    async def meet(name: str) -> tuple[Resource, str]:
        # All four must be on the loop at once to pass: proof that they run concurrently.
        await asyncio.wait_for(asyncio.to_thread(barrier.wait), 10)
        return resource.get(), request_id.get()

    def call(name: str) -> None:
        request_id.set(name)
        seen.append(run_async(meet(name)))

    threads = [threading.Thread(target=call, args=(f"thread-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(made) for made, _ in seen}) == 1  # one resource for every thread
    assert {made.thread for made, _ in seen} == {"loopsafe-process-loop"}
    assert sorted(name for _, name in seen) == [f"thread-{n}" for n in range(4)]
    closed = seen[0][0]
    assert close_all_loops() == 1
    assert closed.closed_in == [closed.loop]  # closed inside the shared loop when it stopped


def test_process_loop_timeouts_and_interrupts_cancel_only_that_coroutine(
    process_loop: str, alarm: Callable[[float, type[BaseException]], None]
) -> None:
    cleanup: list[str] = []
    neighbour: list[str] = []

    def run_neighbour() -> None:
        neighbour.append(run_async(asyncio.sleep(0.6, result="neighbour done")))

    thread = threading.Thread(target=run_neighbour)
    thread.start()
    with pytest.raises(TimeoutError, match=r"_sleep_with_cleanup\(\) did not finish within 0.2 s"):
        run_async(_sleep_with_cleanup(cleanup), timeout=0.2)
    alarm(0.2, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run_async(_sleep_with_cleanup(cleanup))
    thread.join()
    assert cleanup == ["cleaned up", "cleaned up"]
    assert neighbour == ["neighbour done"]
    assert run_async(other_tasks()) == []


def test_a_task_blocking_the_process_loop_is_named_in_a_warning(
    process_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loopsafe")

    async def blocks() -> str:
        time.sleep(0.8)  # noqa: ASYNC251 - the mistake the warning exists for
        return "done"

    _limits.set_thread_deadline(None, task="tests.blocks[42]")
    try:
        assert run_async(blocks()) == "done"
    finally:
        _limits.set_thread_deadline(None)
    warnings = [
        getattr(record, "loopsafe_fields", {})
        for record in caplog.records
        if getattr(record, "loopsafe_event", None) == "loopsafe.celery_loop_blocked"
    ]
    assert [fields["task"] for fields in warnings] == ["tests.blocks[42]"]


# --- fork -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("fork", FORKS)
def test_forked_child_gets_a_fresh_loop_and_the_parent_keeps_its_own(
    fork: Callable[[], int],
) -> None:
    async def via_helper() -> Resource:
        return run_async(use_resource(), timeout=10)  # nested: runs on helper thread 0

    parent = run_async(use_resource())
    parent_helper = run_async(via_helper())

    def child() -> dict[str, Any]:
        mine = run_async(use_resource())
        mine_helper = run_async(via_helper())
        closed = close_all_loops()  # must never touch the inherited loops
        return {
            "pid": mine.pid,
            "fresh": mine is not parent and mine.loop is not parent.loop,
            "fresh_helper": mine_helper is not parent_helper,
            "closed": closed,
            "parent_closed_in_child": parent.closed_in != [] or parent.loop.is_closed(),
        }

    report = in_child(child, fork=fork)
    assert report["pid"] != os.getpid()
    assert report["fresh"] is True
    assert report["fresh_helper"] is True
    assert report["closed"] == 2  # the child's own loop and helper only
    assert report["parent_closed_in_child"] is False
    # The parent's loop is untouched: same resource, and its wake-up pipe still works, which a
    # child closing the shared epoll registration would have broken (a hang, caught by timeout).
    assert run_async(use_resource()) is parent
    assert run_async(via_helper()) is parent_helper
    assert parent.closed_in == parent_helper.closed_in == []
