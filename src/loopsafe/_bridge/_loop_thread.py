"""Event loops on threads of their own, and coroutines handed to them from other threads.

Two uses: helper loops for `run_async` called where a loop already runs in the calling thread
(one per nesting depth, so nested calls cannot deadlock), and the process loop
(``use_process_loop()``, ``install(app, loop="process")``, or threads beyond the per-thread loop
cap), which runs the coroutines of every thread that hands them over concurrently.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import contextvars
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .. import _fork
from .._bound import await_bounded
from .._errors import BoundExceededError
from .._log import get_logger
from . import _limits, _runner

__all__ = (
    "MAX_NESTING",
    "LoopThread",
    "current_process_loop",
    "nesting_depth",
    "process_loop",
    "run_on",
    "running_loops",
    "stop_all",
)

T = TypeVar("T")

#: Nested `run_async` calls from code already running on a loop (each level needs a helper
#: thread); deeper nesting is almost certainly unbounded recursion.
MAX_NESTING = 8

_log = get_logger("loopsafe.run_async")
_local = threading.local()
_lock = threading.Lock()
_helpers: dict[int, LoopThread] = {}
_process_loop: LoopThread | None = None


def nesting_depth() -> int:
    """How deep the calling thread is in helper loops: -1 outside them, 0 on the process loop."""
    depth: int = getattr(_local, "depth", -1)
    return depth


class _Call:
    """One coroutine handed to a loop thread, and its outcome."""

    __slots__ = (
        "cancel_error",
        "context",
        "coro",
        "done",
        "exception",
        "label",
        "result",
        "task",
        "timeout",
        "waiter",
    )

    def __init__(
        self, coro: Coroutine[Any, Any, Any], timeout: float | None, label: str | None
    ) -> None:
        self.coro = coro
        self.timeout = timeout
        self.label = label
        self.context = contextvars.copy_context()
        # Held until the outcome is in: the caller waits by acquiring it, the loop thread wakes it
        # with one release (a threading.Event runs a Condition in Python on both threads).
        self.waiter = _thread.allocate_lock()
        self.waiter.acquire()
        self.done = False
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None
        self.exception: BaseException | None = None
        # Why the loop thread cancelled it (a revoke, a shutdown), raised to the waiting thread.
        self.cancel_error: BaseException | None = None

    def finish(self, exception: BaseException | None = None, result: Any = None) -> None:
        """Record the outcome and wake the caller (on the loop thread, once)."""
        self.exception = exception
        self.result = result
        self.done = True
        self.waiter.release()

    def wait(self, timeout: float = -1) -> bool:
        """Block until the outcome is in (at most `timeout` seconds if given); whether it is."""
        # `done` first: after one successful wait the lock stays taken.
        return self.done or self.waiter.acquire(timeout=timeout)


def _stopped_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"run_async: {name} was stopped (the worker or process is shutting down); the coroutine "
        "was not run."
    )


class LoopThread:
    """A persistent loop running forever on its own daemon thread."""

    def __init__(
        self,
        name: str,
        loop_factory: _runner.LoopFactory,
        *,
        depth: int,
        blocked_after: float | None = None,
    ) -> None:
        self.name = name
        self.depth = depth
        self.pid = os.getpid()
        self.loop = loop_factory()
        # Calls handed over and not started yet; `waking` while a callback that starts them is
        # scheduled, so a burst of calls from many threads wakes the loop once, not once each.
        self.pending: deque[_Call] = deque()
        self.waking = False
        # Only touched on the loop's own thread.
        self.calls: dict[asyncio.Task[Any], _Call] = {}
        self.blocked_after = blocked_after
        self.last_beat = time.monotonic()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()
        if blocked_after is not None:
            threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True).start()

    def _serve(self) -> None:
        _local.depth = self.depth
        if self.blocked_after is not None:
            self.loop.call_soon(self._beat)
        try:
            self.loop.run_forever()
        finally:
            self.stopping.set()
            _runner.shutdown_loop(self.loop, _limits.DEFAULT_SHUTDOWN_TIMEOUT, self.name)
            # Handed over while the loop closed, never started: their callers get an error.
            while self.pending:
                call = self.pending.popleft()
                call.coro.close()
                call.finish(_stopped_error(self.name))

    def usable(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive() and not self.loop.is_closed()

    def submit(self, call: _Call) -> None:
        """Hand `call` to the loop (from any thread); RuntimeError if the loop is closed."""
        self.pending.append(call)
        if self.waking:
            # A scheduled _start_pending will start this call too, unless the loop closed first:
            # then _serve fails whatever is still pending, or we take the call back below.
            if not self.loop.is_closed():
                return
        else:
            self.waking = True
            try:
                self.loop.call_soon_threadsafe(self._start_pending)
                return
            except RuntimeError:  # closed; `waking` stays set, so later calls check as above
                pass
        try:
            self.pending.remove(call)
        except ValueError:  # _serve took it and fails it
            return
        raise _stopped_error(self.name)

    def _start_pending(self) -> None:
        # Cleared first: a call appended from now on either is started below or schedules
        # another wake-up.
        self.waking = False
        pending = self.pending
        while pending:
            call = pending.popleft()
            try:
                self._start(call)
            except Exception as exc:  # pragma: no cover - create_task failing: tell the caller
                call.coro.close()
                call.finish(exc)

    def _start(self, call: _Call) -> None:
        # Created inside the caller's copied context: the task runs with the caller's contextvars.
        # The bound runs here, on the loop, as for a thread's own loop (see _runner).
        coro = call.coro
        if call.timeout is not None:
            coro = await_bounded(coro, call.timeout, grace=_limits.DEFAULT_CLEANUP_TIMEOUT)
        task = call.context.run(self.loop.create_task, coro, name=call.label)
        call.task = task
        self.calls[task] = call
        task.add_done_callback(self._finish)

    def _finish(self, task: asyncio.Task[Any]) -> None:
        call = self.calls.pop(task)
        if task.cancelled():
            call.finish(asyncio.CancelledError())
        else:
            exception = task.exception()
            call.finish(exception, None if exception is not None else task.result())

    def cancel(self, call: _Call, error: BaseException | None = None) -> None:
        """Cancel `call`'s coroutine (from any thread); `error` is what its caller will see."""

        def cancel() -> None:
            if call.task is not None and not call.task.done():
                call.cancel_error = error
                call.task.cancel()

        self._soon(cancel)

    def cancel_where(self, label: str | None, error: BaseException) -> None:
        """Cancel the coroutines labelled `label` (every coroutine with None), from any thread."""

        def cancel() -> None:
            for call in list(self.calls.values()):
                if label is None or call.label == label:
                    self.cancel(call, error)

        self._soon(cancel)

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        """Schedule `callback` on the loop `delay` seconds from now (from any thread)."""
        self._soon(self.loop.call_later, delay, callback)

    def _soon(self, callback: Callable[..., object], *args: object) -> None:
        # A loop closed in the meantime runs nothing any more: nothing left to cancel there.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float) -> int:
        if not self.usable():
            return 0
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed in the meantime
            return 0
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout * 4)
        return 1

    # --- telling which task blocked the loop -----------------------------------------------------

    def _beat(self) -> None:
        assert self.blocked_after is not None
        self.last_beat = time.monotonic()
        self.loop.call_later(self.blocked_after / 4, self._beat)

    def _watch(self) -> None:
        assert self.blocked_after is not None
        reported = 0.0
        while not self.stopping.wait(self.blocked_after / 4):
            beat = self.last_beat
            stalled = time.monotonic() - beat
            if stalled <= self.blocked_after or beat == reported:
                continue
            reported = beat  # once per stall
            task = asyncio.current_task(self.loop)
            call = self.calls.get(task) if task is not None else None
            # A label is a Celery task's name[id] (set by install()'s prerun receiver): keep the
            # event Celery users know; plain threads' coroutines get the bridge's own.
            celery = call is not None and call.label is not None
            _log.warning(
                "loopsafe.celery_loop_blocked" if celery else "loopsafe.run_async_loop_blocked",
                loop=self.name,
                seconds=round(stalled, 3),
                task=task.get_name() if task is not None else None,
                hint="this coroutine blocked the shared loop (time.sleep, sync I/O, heavy CPU) "
                "and every other one on it waited: await instead, or use asyncio.to_thread",
            )


def run_on(
    loop_thread: LoopThread,
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
    make_error: _limits.TimeoutFactory,
    label: str | None = None,
) -> T:
    """Run `coro` on `loop_thread` and wait for it in the calling thread."""
    call = _Call(coro, timeout, label)
    try:
        loop_thread.submit(call)
    except RuntimeError:
        coro.close()
        raise
    try:
        call.wait()
    except BaseException:
        # Interrupted in this thread: cancel the coroutine over there and let it clean up.
        loop_thread.cancel(call)
        if not call.wait(_limits.DEFAULT_CLEANUP_TIMEOUT):
            _runner.warn_cleanup_timeout(loop_thread.name)
        raise
    exception = call.exception
    if isinstance(exception, BoundExceededError) and timeout is not None:
        if not exception.settled:
            _runner.warn_cleanup_timeout(loop_thread.name)
        exception = make_error(_limits.describe(coro), timeout)
    elif isinstance(exception, asyncio.CancelledError) and call.cancel_error is not None:
        exception = call.cancel_error
    if exception is not None:
        try:
            raise exception
        finally:
            del exception, call  # no reference cycle through the traceback
    result: T = call.result
    return result


def helper(depth: int, loop_factory: _runner.LoopFactory) -> LoopThread:
    """The helper loop for `run_async` calls nested `depth` deep (started on first use)."""
    found = _helpers.get(depth)
    if found is not None and found.usable():
        return found
    with _lock:
        found = _helpers.get(depth)
        if found is None or not found.usable():
            found = _helpers[depth] = LoopThread(
                f"loopsafe-run-async-helper-{depth}", loop_factory, depth=depth
            )
    return found


def process_loop(loop_factory: _runner.LoopFactory, blocked_after: float | None) -> LoopThread:
    """This process's shared loop (started on first use, and again in a forked child)."""
    global _process_loop
    found = _process_loop
    if found is not None and found.usable():
        return found
    with _lock:
        if _process_loop is None or not _process_loop.usable():
            _fork.check_pid()
            _process_loop = LoopThread(
                "loopsafe-process-loop", loop_factory, depth=0, blocked_after=blocked_after
            )
            _log.debug("loopsafe.run_async_process_loop_started", pid=os.getpid())
        return _process_loop


def current_process_loop() -> LoopThread | None:
    """This process's shared loop if it runs."""
    found = _process_loop
    return found if found is not None and found.usable() else None


def running_loops() -> bool:
    """Whether this process has a helper or process loop thread."""
    return bool(_helpers) or _process_loop is not None


def stop_all(timeout: float) -> int:
    """Stop every loop thread of this process (each drains and closes its loop); how many."""
    global _process_loop
    with _lock:
        threads = list(_helpers.values())
        _helpers.clear()
        if _process_loop is not None:
            threads.append(_process_loop)
            _process_loop = None
    # The process loop last: nested calls on helpers may be waited for by its coroutines.
    return sum(thread.stop(timeout) for thread in threads)


def _forget_inherited() -> None:
    """In a forked child: the loop threads did not survive the fork; keep their loops untouched."""
    global _lock, _process_loop
    _lock = threading.Lock()
    inherited = _runner.inherited_loops()
    inherited.extend(thread.loop for thread in _helpers.values())
    if _process_loop is not None:
        inherited.append(_process_loop.loop)
    _helpers.clear()
    _process_loop = None
    _local.__dict__.pop("depth", None)


_fork.on_fork_in_child(_forget_inherited)
