"""run_async's loop modes and limits: the public switch, the environment, thread churn, idle loops.

Also the bridge's public home: ``loopsafe.run_async`` (``loopsafe.celery.run_async`` is the same
object) and the deprecated ``loopsafe.celery`` spellings of the loop-closing functions.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import loopsafe
import loopsafe.celery
from loopsafe import LoopLocal, close_all_loops, close_thread_loop, run_async, use_process_loop
from loopsafe._bridge import _limits, _run_async, _runner
from tests.bridge.conftest import eventually
from tests.conftest import LOOP_FACTORIES


@pytest.fixture(params=list(LOOP_FACTORIES))
def fresh_settings(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.MonkeyPatch]:
    """Settings as in a new process: the next call reads the environment the test sets. Loops
    come from each loop implementation in turn (reused and closed from other threads too)."""
    for name in (_run_async.MODE_ENV, _run_async.LOOPS_ENV, _run_async.IDLE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_run_async, "_settings", _run_async._Settings())
    _run_async.set_loop_factory(LOOP_FACTORIES[request.param])
    yield monkeypatch
    close_all_loops()
    _runner.set_idle_close(_limits.DEFAULT_IDLE_CLOSE)


async def where() -> tuple[str, asyncio.AbstractEventLoop]:
    return threading.current_thread().name, asyncio.get_running_loop()


def in_thread(function: Callable[[], object]) -> object:
    """Call `function` on a new thread that then ends; its result (or exception)."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return outcome[0]


# --- public home ------------------------------------------------------------------------------


def test_run_async_is_public_at_the_top_level_and_the_same_object_in_celery() -> None:
    assert loopsafe.celery.run_async is loopsafe.run_async
    assert loopsafe.run_async.__module__ == "loopsafe"
    assert loopsafe.run_async(asyncio.sleep(0, result=3)) == 3


@pytest.mark.parametrize("name", ["close_all_loops", "close_thread_loop"])
def test_celery_spellings_of_the_closing_functions_warn_and_still_work(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"use loopsafe\.{name}"):
        moved = getattr(loopsafe.celery, name)
    assert moved is getattr(loopsafe, name)


def test_unknown_celery_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'close_everything'"):
        importlib.import_module("loopsafe.celery").close_everything  # noqa: B018 - the lookup is the test


def test_run_async_from_the_core_imports_no_integration() -> None:
    code = (
        "import sys, asyncio, loopsafe\n"
        "assert loopsafe.run_async(asyncio.sleep(0, result=5)) == 5\n"
        "print(sorted(m for m in ('sqlalchemy', 'redis', 'celery', 'asyncpg') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# --- the mode switch ----------------------------------------------------------------------------


def test_threads_get_their_own_loops_by_default(fresh_settings: pytest.MonkeyPatch) -> None:
    name, loop = run_async(where())
    assert name == threading.current_thread().name
    other = in_thread(lambda: run_async(where()))
    assert isinstance(other, tuple)
    assert other[1] is not loop


def test_environment_selects_the_process_loop(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv("LOOPSAFE_RUN_ASYNC_LOOP", "process")
    first = in_thread(lambda: run_async(where()))
    second = in_thread(lambda: run_async(where()))
    assert isinstance(first, tuple)
    assert isinstance(second, tuple)
    assert first[0] == second[0] == "loopsafe-process-loop"
    assert first[1] is second[1]
    assert run_async(where())[1] is first[1]  # the main thread too


def test_use_process_loop_overrides_the_environment(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv("LOOPSAFE_RUN_ASYNC_LOOP", "process")
    use_process_loop(False)
    assert run_async(where())[0] == threading.current_thread().name
    use_process_loop()
    assert run_async(where())[0] == "loopsafe-process-loop"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOOPSAFE_RUN_ASYNC_LOOP", "shared", "must be 'thread' .* or 'process'"),
        ("LOOPSAFE_LOOPS_PER_PROCESS", "0", "must be a whole number >= 1"),
        ("LOOPSAFE_LOOPS_PER_PROCESS", "eight", "must be a whole number >= 1"),
        ("LOOPSAFE_RUN_ASYNC_IDLE_CLOSE", "-1", "must be a number of seconds > 0 or 'never'"),
        ("LOOPSAFE_RUN_ASYNC_IDLE_CLOSE", "soon", "must be a number of seconds > 0 or 'never'"),
    ],
)
def test_bad_environment_values_fail_the_call_clearly(
    fresh_settings: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    fresh_settings.setenv(variable, value)
    coro = asyncio.sleep(0)
    with pytest.raises(ValueError, match=rf"{variable} {message}"):
        run_async(coro)
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"  # no "never awaited" warning


@pytest.mark.parametrize(
    ("blocked_after", "error"), [(-1.0, ValueError), (float("nan"), ValueError), ("1", TypeError)]
)
def test_use_process_loop_rejects_bad_blocked_after(
    fresh_settings: pytest.MonkeyPatch, blocked_after: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="use_process_loop\\(\\) blocked_after"):
        use_process_loop(True, blocked_after=blocked_after)  # type: ignore[arg-type]


# --- thread churn -------------------------------------------------------------------------------


def test_ended_threads_loops_close_in_parallel(fresh_settings: pytest.MonkeyPatch) -> None:
    """Each closing loop waits for the others to be closing too: one closer at a time would fail."""
    threads = 6
    barrier = threading.Barrier(threads)
    met: list[bool] = []

    def meet(_: object) -> None:
        try:
            barrier.wait(timeout=10)  # blocks this closing loop only: its closer is its own thread
            met.append(True)
        except threading.BrokenBarrierError:
            met.append(False)

    resource_closing: LoopLocal[object] = LoopLocal(
        object, aclose=lambda _: asyncio.to_thread(lambda: meet(None)), name="tests.meets-async"
    )

    async def use() -> None:
        resource_closing.get()

    together = threading.Barrier(threads)

    def work() -> None:
        run_async(use())
        together.wait(10)  # all alive at once: six loops, none reused by a later thread

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    eventually(lambda: len(met) == threads, "every ended thread's loop closed", within=30)
    assert met == [True] * threads
    eventually(lambda: not _runner.open_records(), "no loop left open")


def test_an_ended_threads_loop_is_reused_by_the_next_thread_then_closed(
    fresh_settings: pytest.MonkeyPatch,
) -> None:
    """A thread per request reuses warm loops (and their pools); unused, a spare closes soon."""
    fresh_settings.setattr(_runner, "SPARE_LINGER", 0.3)
    closed: list[asyncio.AbstractEventLoop] = []

    async def note(_: object) -> None:
        closed.append(asyncio.get_running_loop())

    resource: LoopLocal[object] = LoopLocal(object, aclose=note, name="tests.spare")

    async def use() -> tuple[object, asyncio.AbstractEventLoop]:
        return resource.get(), asyncio.get_running_loop()

    first = in_thread(lambda: run_async(use()))
    second = in_thread(lambda: run_async(use()))
    assert isinstance(first, tuple)
    assert isinstance(second, tuple)
    assert second == first  # same loop, same resource: nothing reopened
    # Its resources close inside it, then the loop itself closes.
    eventually(
        lambda: closed == [first[1]] and first[1].is_closed(), "the spare loop closed, lingered"
    )
    eventually(lambda: not _runner.open_records(), "no loop left open")


def test_loops_per_process_caps_per_thread_loops(fresh_settings: pytest.MonkeyPatch) -> None:
    """With 3 loops allowed, 2 threads get their own and the rest share the process loop."""
    fresh_settings.setenv("LOOPSAFE_LOOPS_PER_PROCESS", "3")
    threads = 6
    started = threading.Barrier(threads + 1)
    release = threading.Event()
    seen: list[tuple[str, asyncio.AbstractEventLoop]] = []

    def work() -> None:
        seen.append(run_async(where()))
        started.wait(10)
        release.wait(10)  # alive: its loop stays open while the others call

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    started.wait(10)
    loops = {loop for _, loop in seen}
    shared = [name for name, _ in seen if name == "loopsafe-process-loop"]
    release.set()
    for worker in workers:
        worker.join(30)
    assert len(loops) <= 3
    assert len(shared) == threads - 2


def test_one_loop_per_process_keeps_the_first_thread_on_its_own_loop(
    fresh_settings: pytest.MonkeyPatch,
) -> None:
    """LOOPSAFE_LOOPS_PER_PROCESS=1 (a prefork child's budget): the calling thread runs its own
    loop as without a cap; a second thread, alive meanwhile, shares the process loop."""
    fresh_settings.setenv("LOOPSAFE_LOOPS_PER_PROCESS", "1")
    name, loop = run_async(where())
    assert name == threading.current_thread().name
    other = in_thread(lambda: run_async(where()))
    assert isinstance(other, tuple)
    assert other[0] == "loopsafe-process-loop"
    assert run_async(where())[1] is loop


def test_idle_loop_is_closed_and_the_next_call_makes_a_new_one(
    fresh_settings: pytest.MonkeyPatch,
) -> None:
    """Import-time work does not pin the main thread's loop (and its pools) for good."""
    fresh_settings.setenv("LOOPSAFE_RUN_ASYNC_IDLE_CLOSE", "0.2")
    closed: list[asyncio.AbstractEventLoop] = []

    async def note(_: object) -> None:
        closed.append(asyncio.get_running_loop())

    resource: LoopLocal[object] = LoopLocal(object, aclose=note, name="tests.idle")

    async def use() -> asyncio.AbstractEventLoop:
        resource.get()
        return asyncio.get_running_loop()

    first = run_async(use())
    eventually(
        lambda: closed == [first] and first.is_closed(), "the idle loop closed, resources inside it"
    )
    assert close_thread_loop() is False  # nothing left to close
    second = run_async(use())
    assert second is not first


def test_idle_close_never_keeps_loops(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv("LOOPSAFE_RUN_ASYNC_IDLE_CLOSE", "never")
    _, loop = run_async(where())
    time.sleep(0.3)
    assert run_async(where())[1] is loop
