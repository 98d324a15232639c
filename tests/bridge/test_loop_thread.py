"""Loop threads: handing coroutines over from many threads, and a loop that stops under them."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from loopsafe._bridge import _limits, _loop_thread, _runner

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@pytest.fixture
def loop_thread(loop_factory: LoopFactory) -> Iterator[_loop_thread.LoopThread]:
    """A loop thread of its own (not the process's), for each loop implementation."""
    thread = _loop_thread.LoopThread("tests-loop-thread", loop_factory, depth=0)
    yield thread
    thread.stop(_limits.DEFAULT_SHUTDOWN_TIMEOUT)


def run_on(thread: _loop_thread.LoopThread, coro: Coroutine[Any, Any, Any]) -> Any:
    return _loop_thread.run_on(thread, coro, None, _limits.default_timeout_error)


def in_threads(count: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads


def wait_for(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Block the calling thread (a loop's, on purpose) until `condition` holds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s")
        time.sleep(0.005)


def test_a_burst_of_calls_from_many_threads_wakes_the_loop_once(
    loop_thread: _loop_thread.LoopThread,
) -> None:
    """Calls handed over while the loop is busy are started together, by one wake-up."""
    wakeups: list[int] = []
    start_pending = loop_thread._start_pending

    def counted() -> None:
        wakeups.append(len(loop_thread.pending))
        start_pending()

    loop_thread._start_pending = counted  # type: ignore[method-assign]
    burst = 20

    async def busy() -> None:
        wait_for(lambda: len(loop_thread.pending) == burst)  # holds the loop until all are in

    async def work(n: int) -> int:
        await asyncio.sleep(0)
        return n

    results: dict[int, int] = {}
    blocker = in_threads(1, lambda _: run_on(loop_thread, busy()))
    wait_for(lambda: bool(loop_thread.calls))  # `busy` runs: the loop is held
    callers = in_threads(burst, lambda n: results.update({n: run_on(loop_thread, work(n))}))
    for thread in [*blocker, *callers]:
        thread.join(10)
    assert results == {n: n for n in range(burst)}
    assert wakeups == [1, burst]  # one for `busy`, one for the whole burst


def test_calls_to_a_stopped_loop_thread_fail_clearly_and_close_the_coroutine(
    loop_thread: _loop_thread.LoopThread,
) -> None:
    assert run_on(loop_thread, asyncio.sleep(0, result="ran")) == "ran"
    assert loop_thread.stop(_limits.DEFAULT_SHUTDOWN_TIMEOUT) == 1
    for _ in range(2):  # the first finds the loop closed, the next one too
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match=r"tests-loop-thread was stopped.*was not run"):
            run_on(loop_thread, coro)
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert not loop_thread.pending


def test_a_call_still_pending_when_the_loop_closes_fails_instead_of_hanging(
    loop_thread: _loop_thread.LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call handed over after the closing loop's last iteration is failed, not left waiting."""
    outcome: list[BaseException] = []
    coro = asyncio.sleep(0)

    def call(_: int) -> None:
        try:
            run_on(loop_thread, coro)
        except RuntimeError as exc:
            outcome.append(exc)

    callers: list[threading.Thread] = []

    def a_call_arrives_then_close(
        loop: asyncio.AbstractEventLoop, timeout: float, description: str
    ) -> None:
        # The window this covers: the loop ran its last iteration, a call came in, then close.
        callers.extend(in_threads(1, call))
        wait_for(lambda: bool(loop_thread.pending))
        loop.close()

    monkeypatch.setattr(_runner, "shutdown_loop", a_call_arrives_then_close)
    loop_thread.stop(_limits.DEFAULT_SHUTDOWN_TIMEOUT)
    callers[0].join(10)
    assert not callers[0].is_alive(), "the caller was left waiting for a loop that closed"
    assert [str(exc) for exc in outcome] == [
        "run_async: tests-loop-thread was stopped (the worker or process is shutting down); the "
        "coroutine was not run."
    ]
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
