"""run_async: run a coroutine from sync code on the calling thread's persistent event loop.

Each thread gets one event loop, created on its first `run_async` and kept for the life of the
thread (and process), so loop-local resources — a `loopsafe.db` engine's pool, a Redis client —
are reused by every later call instead of being rebuilt per call as with `asyncio.run`. The loop
runs on the calling thread itself (``run_until_complete``), which keeps a call as cheap as a bare
``loop.run_until_complete`` and lets signals (Celery's soft time limit, Ctrl-C) interrupt the wait.

Lifecycle of those loops:

- forked child: inherited loops are forgotten, never closed or used (see `_forget_inherited`);
- thread ends: its loop is closed on a small reaper thread (`_thread_ended`);
- `close_thread_loop()` / `close_all_loops()` (Celery's shutdown signals, and ``atexit``): each loop
  is drained — leftover tasks cancelled, ``loopsafe.aclose_all()``, async generators, default
  executor — and closed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import math
import os
import sys
import threading
import time
import types
import weakref
from asyncio.events import _get_running_loop
from collections.abc import Callable, Coroutine
from queue import SimpleQueue
from typing import Any, NoReturn, TypeVar

from .. import _fork
from .._log import get_logger

__all__ = (
    "DEFAULT_CLEANUP_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "MAX_NESTING",
    "close_all_loops",
    "close_thread_loop",
    "positive_seconds",
    "register_interrupt",
    "run_async",
    "set_thread_deadline",
)

T = TypeVar("T")

#: How long a cancelled coroutine's ``finally`` blocks may run (after a timeout or an exception
#: raised in the waiting thread) before `run_async` gives up waiting and raises anyway.
DEFAULT_CLEANUP_TIMEOUT = 10.0
#: Bound for each step of closing a loop (leftover tasks, resources, default executor).
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: Nested `run_async` calls from code already running on a loop (each level needs a helper
#: thread); deeper nesting is almost certainly unbounded recursion.
MAX_NESTING = 8

_log = get_logger("loopsafe.celery")

_CoroutineType = types.CoroutineType
_getpid = os.getpid
_monotonic = time.monotonic

TimeoutFactory = Callable[[str, float], BaseException]

#: Makes every run_async loop. asyncio.new_event_loop honours the event loop policy (so an
#: installed uvloop policy applies); tests swap in each loop implementation here.
_loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop


def _default_timeout_error(what: str, seconds: float) -> BaseException:
    return TimeoutError(
        f"run_async: {what} did not finish within {seconds:g} s; it was cancelled and its cleanup "
        "ran. Raise the timeout, or make the coroutine faster."
    )


class _ThreadLoop:
    """One thread's persistent loop and what is needed to close it safely from elsewhere."""

    __slots__ = (
        "__weakref__",
        "closed",
        "description",
        "finalizer",
        "interrupt",
        "lock",
        "loop",
        "pid",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pid = _getpid()
        self.description = (
            f"run_async loop 0x{id(loop):x} of thread {threading.current_thread().name!r}"
        )
        # Held by the owning thread while the loop runs; closers from other threads take it so a
        # loop is never closed under a running call.
        self.lock = threading.Lock()
        self.closed = False
        # An exception a signal handler raised inside a loop callback (see _exception_handler).
        self.interrupt: BaseException | None = None
        self.finalizer: weakref.finalize[Any, Any] | None = None


class _ThreadSentinel:
    """Lives only in its thread's `threading.local`: collected when the thread ends."""

    __slots__ = ("__weakref__",)


class _TaskDeadline:
    """A Celery task's time budget, for pools that do not enforce time limits themselves."""

    __slots__ = ("at", "make_error", "seconds")

    def __init__(self, seconds: float, make_error: TimeoutFactory) -> None:
        self.seconds = seconds
        self.at = _monotonic() + seconds
        self.make_error = make_error

    def error(self, what: str, _remaining: float) -> BaseException:
        """The error for running out of budget, naming the whole budget (not what was left)."""
        return self.make_error(what, self.seconds)


_local = threading.local()
_registry_lock = threading.Lock()
# Strong references on purpose: a loop stays here until it is closed (by its thread's end, a
# shutdown signal or atexit), never longer.
_records: set[_ThreadLoop] = set()
_helpers: dict[int, _Helper] = {}
_reaper: _Reaper | None = None
# Loops inherited across fork(). Never closed: closing one would EPOLL_CTL_DEL its self-pipe from
# the epoll instance the child shares with its parent, deafening the parent's loop. Never
# collected either (a collected open loop warns): they are held here, a few file descriptors each.
_inherited: list[asyncio.AbstractEventLoop] = []
# Exception types that signal handlers raise to interrupt a task (Celery's SoftTimeLimitExceeded,
# registered by install()). asyncio swallows them when they land inside a plain loop callback.
_interrupt_types: tuple[type[BaseException], ...] = ()


def register_interrupt(exc_type: type[BaseException]) -> None:
    """Treat `exc_type`, raised by a signal handler inside a loop callback, as an interrupt."""
    global _interrupt_types
    if exc_type not in _interrupt_types:
        _interrupt_types = (*_interrupt_types, exc_type)


def positive_seconds(value: object) -> bool:
    """Whether `value` is a usable number of seconds: a real, positive int or float (not NaN)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value > 0
        and not math.isnan(value)
    )


def _warn_cleanup_timeout(record: _ThreadLoop) -> None:
    _log.warning(
        "loopsafe.run_async_cleanup_timeout",
        loop=record.description,
        seconds=DEFAULT_CLEANUP_TIMEOUT,
        hint="the coroutine ignored cancellation; it stays scheduled on the loop",
    )


def _describe(coro: Coroutine[Any, Any, Any]) -> str:
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"coroutine {name}()"


def _not_a_coroutine(obj: object) -> TypeError:
    if isinstance(obj, asyncio.Future):
        hint = (
            "a Future or Task belongs to the loop that created it; pass the coroutine itself, "
            "for example run_async(fetch()) instead of run_async(asyncio.ensure_future(fetch()))"
        )
    elif callable(obj) and asyncio.iscoroutinefunction(obj):
        name = getattr(obj, "__qualname__", repr(obj))
        hint = f"call the coroutine function: run_async({name}(...)), not run_async({name})"
    else:
        hint = "pass the result of calling an `async def` function, for example run_async(main())"
    return TypeError(f"run_async() expects a coroutine object, got {type(obj).__name__}: {hint}")


def run_async(coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    """Run `coro` to completion from synchronous code and return its result.

    The coroutine runs on the calling thread's persistent event loop (created on first use, one
    per thread per process, recreated in a forked child), so loop-local resources such as
    `loopsafe.db` engines and `loopsafe.redis` clients stay pooled across calls. Called where an
    event loop is already running in this thread (sync code called from async code, an eager
    Celery task inside a FastAPI handler), the coroutine runs on a helper loop thread instead of
    deadlocking; this thread blocks until it finishes. The caller's context variables are copied in.

    Exceptions propagate with their own type and traceback. An exception raised in the waiting
    thread while the coroutine runs (a signal handler's, ``KeyboardInterrupt``, Celery's
    ``SoftTimeLimitExceeded``) cancels the coroutine, waits up to `DEFAULT_CLEANUP_TIMEOUT`
    seconds for its ``finally`` blocks, then propagates: nothing is left running on the loop.

    Raises:
        TypeError: `coro` is not a coroutine object.
        ValueError: `timeout` is not a positive number.
        TimeoutError: `timeout` seconds passed; the coroutine was cancelled and its cleanup ran.
        RuntimeError: calls nested more than `MAX_NESTING` deep.

    .. versionadded:: 0.1.0
    """
    if type(coro) is not _CoroutineType and not isinstance(coro, Coroutine):
        raise _not_a_coroutine(coro)
    make_error: TimeoutFactory = _default_timeout_error
    if timeout is not None:
        if not positive_seconds(timeout):
            coro.close()
            raise ValueError(
                f"run_async timeout must be a positive number of seconds or None, got {timeout!r}"
            )
    else:
        deadline: _TaskDeadline | None = getattr(_local, "deadline", None)
        if deadline is not None:
            timeout = deadline.at - _monotonic()
            make_error = deadline.error
            if timeout <= 0:
                coro.close()
                raise make_error(_describe(coro), 0.0)
    if _get_running_loop() is not None:
        return _run_on_helper(coro, timeout, make_error)
    try:
        record: _ThreadLoop | None = _local.record
    except AttributeError:
        record = None
    if record is None or record.closed or record.pid != _getpid():
        record = _thread_loop()
    lock = record.lock
    try:
        lock.acquire()
    except BaseException:
        coro.close()
        raise
    try:
        if record.closed:  # closed by another thread while we waited for the lock
            lock.release()
            record = _thread_loop()
            lock = record.lock
            lock.acquire()
        return _run_here(record, coro, timeout, make_error)
    finally:
        lock.release()


def _run_here(
    record: _ThreadLoop,
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
    make_error: TimeoutFactory,
) -> T:
    loop = record.loop
    record.interrupt = None  # one a previous call's loop.stop() raced with its task's end
    # The task copies the caller's contextvars (create_task takes a context snapshot).
    task = loop.create_task(coro)
    if timeout is None:
        try:
            return loop.run_until_complete(task)
        except BaseException as exc:
            if task.done() and record.interrupt is None:
                raise
            _interrupted(record, task, exc)
    expired = gave_up = False
    handle: asyncio.TimerHandle | None = None

    def give_up() -> None:
        # The cancelled coroutine's cleanup overran its bound: stop waiting for it.
        nonlocal gave_up
        gave_up = True
        loop.stop()

    def expire() -> None:
        nonlocal expired, handle
        expired = True
        task.cancel()
        handle = loop.call_later(DEFAULT_CLEANUP_TIMEOUT, give_up)

    handle = loop.call_later(timeout, expire)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if expired and task.cancelled():
            raise make_error(_describe(coro), timeout) from None
        raise
    except BaseException as exc:
        if gave_up and not task.done():
            _warn_cleanup_timeout(record)
            raise make_error(_describe(coro), timeout) from None
        if task.done() and record.interrupt is None:
            raise
        _interrupted(record, task, exc)
    finally:
        handle.cancel()  # the timeout's, or the cleanup bound's once it expired


def _interrupted(record: _ThreadLoop, task: asyncio.Task[Any], exc: BaseException) -> NoReturn:
    """The wait was interrupted with `task` still pending: cancel it, let it clean up, re-raise."""
    interrupt, record.interrupt = record.interrupt, None
    if interrupt is not None and isinstance(exc, RuntimeError):
        # Our exception handler stopped the loop to deliver a signal's exception (see below).
        exc = interrupt
    if not task.done():
        task.cancel()
        loop = record.loop
        try:
            loop.run_until_complete(asyncio.wait((task,), timeout=DEFAULT_CLEANUP_TIMEOUT))
        except BaseException as second:
            _log.warning(
                "loopsafe.run_async_cleanup_interrupted",
                loop=record.description,
                error=f"{type(second).__name__}: {second}",
            )
            raise
        if not task.done():
            _warn_cleanup_timeout(record)
        elif not task.cancelled() and task.exception() is not None:
            # Mark it retrieved: what the caller needs to see is the interrupting exception.
            _log.debug(
                "loopsafe.run_async_cleanup_failed",
                loop=record.description,
                error=repr(task.exception()),
            )
    raise exc


def _exception_handler(
    record_ref: weakref.ref[_ThreadLoop],
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        record = record_ref()
        if (
            exc is not None
            and _interrupt_types
            and isinstance(exc, _interrupt_types)
            and record is not None
            and loop.is_running()
        ):
            # A signal handler raised inside a plain callback (not a task), where asyncio would
            # only log it and carry on: Celery's soft time limit would be silently lost. Stop the
            # loop so run_async can deliver it to the caller.
            record.interrupt = exc
            loop.stop()
            return
        loop.default_exception_handler(context)

    return handle


def _thread_loop() -> _ThreadLoop:
    """Create (or re-create) the calling thread's persistent loop."""
    _fork.check_pid()  # forked without the at-fork hooks? Then they run now.
    loop = _loop_factory()
    record = _ThreadLoop(loop)
    loop.set_exception_handler(_exception_handler(weakref.ref(record)))
    sentinel = _ThreadSentinel()
    finalizer = weakref.finalize(sentinel, _thread_ended, record)
    # Not at interpreter exit: our own atexit hook closes every loop in order.
    finalizer.atexit = False
    record.finalizer = finalizer
    _local.record = record
    _local.sentinel = sentinel
    with _registry_lock:
        _records.add(record)
    if threading.current_thread() is not threading.main_thread():
        _ensure_reaper()
    _log.debug("loopsafe.run_async_loop_created", loop=record.description)
    return record


# --- closing ------------------------------------------------------------------------------------


def _shutdown_loop(loop: asyncio.AbstractEventLoop, timeout: float, description: str) -> None:
    """Drain and close `loop`, which is not running, from the calling thread."""
    if loop.is_closed():
        return
    try:
        loop.run_until_complete(_drain(timeout, description))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), timeout))
    except Exception as exc:
        _log.warning(
            "loopsafe.run_async_loop_close_failed",
            loop=description,
            error=f"{type(exc).__name__}: {exc}",
        )
    finally:
        loop.close()
    _log.debug("loopsafe.run_async_loop_closed", loop=description)


async def _drain(timeout: float, description: str) -> None:
    # Leftover tasks first, so their finally blocks hand connections back to the pools before the
    # pools are closed; then every loop-local resource; then whatever closing those started.
    from .._registry import aclose_all

    await _cancel_leftovers(timeout, description)
    await aclose_all()
    await _cancel_leftovers(timeout, description)


async def _cancel_leftovers(timeout: float, description: str) -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            _log.warning(
                "loopsafe.run_async_leftover_failed",
                loop=description,
                task=task.get_name(),
                error=repr(task.exception()),
            )
    if pending:
        _log.warning(
            "loopsafe.run_async_leftover_timeout",
            loop=description,
            tasks=sorted(task.get_name() for task in pending),
            hint="these tasks ignored cancellation; the loop is closed without them",
        )


def _close_record(record: _ThreadLoop, timeout: float) -> bool:
    """Close `record`'s loop if it is idle; False if it stayed busy for `timeout` seconds."""
    if record.pid != _getpid():
        return False
    if not record.lock.acquire(timeout=timeout):
        _log.warning(
            "loopsafe.run_async_loop_busy",
            loop=record.description,
            seconds=timeout,
            hint="a run_async call kept running on it; close it from its own thread",
        )
        return False
    try:
        if record.closed:
            return True
        record.closed = True
        if record.finalizer is not None:
            record.finalizer.detach()
        try:
            _shutdown_loop(record.loop, timeout, record.description)
        finally:
            # Only now: close_all_loops() must still find (and wait on) a loop that the reaper is
            # closing, or the process could exit in the middle of it.
            with _registry_lock:
                _records.discard(record)
        return True
    finally:
        record.lock.release()


def _off_loop(function: Callable[[], T]) -> T:
    """Call `function` here, or on a short-lived thread if this thread is running a loop."""
    if _get_running_loop() is None:
        return function()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="loopsafe-close-loops")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def close_thread_loop(*, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
    """Close the calling thread's `run_async` loop cleanly; the next `run_async` makes a new one.

    Leftover tasks are cancelled, every loop-local resource is closed inside the loop
    (``loopsafe.aclose_all()``), async generators and the default executor are shut down, then the
    loop is closed. Each step is bounded by `timeout` seconds. Returns False if there was no loop
    or it could not be closed (it was running).

    .. versionadded:: 0.1.0
    """
    record: _ThreadLoop | None = getattr(_local, "record", None)
    if record is None or record.closed or record.pid != _getpid():
        return False
    return _off_loop(lambda: _close_record(record, timeout))


def close_all_loops(*, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> int:
    """Close every `run_async` loop of this process, each cleanly (see `close_thread_loop`).

    Loops of live threads are closed only while idle (a loop running a call is waited for up to
    `timeout` seconds, then left alone and logged); their threads get a new loop on their next
    call. Helper loop threads are stopped. Returns how many loops were closed. Celery's
    ``worker_shutdown`` and ``worker_process_shutdown`` signals call this when `install` is used,
    and so does ``atexit``.

    .. versionadded:: 0.1.0
    """
    return _off_loop(lambda: _close_all(timeout))


def _close_all(timeout: float) -> int:
    closed = 0
    with _registry_lock:
        helpers = list(_helpers.values())
        _helpers.clear()
    for helper in helpers:
        closed += helper.stop(timeout)
    with _registry_lock:
        records = list(_records)
    for record in records:
        closed += _close_record(record, timeout)
    return closed


def _close_at_exit() -> None:
    if _records or _helpers:
        close_all_loops()


atexit.register(_close_at_exit)


# --- threads that end ---------------------------------------------------------------------------


class _Reaper:
    """A daemon thread that closes the loops of threads that ended."""

    def __init__(self) -> None:
        self.pid = _getpid()
        self.queue: SimpleQueue[_ThreadLoop] = SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="loopsafe-loop-reaper", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            record = self.queue.get()
            try:
                _close_record(record, DEFAULT_SHUTDOWN_TIMEOUT)
            except Exception as exc:  # pragma: no cover - _shutdown_loop logs its own failures
                _log.warning("loopsafe.run_async_reap_failed", error=repr(exc))


def _ensure_reaper() -> None:
    global _reaper
    if _reaper is None or _reaper.pid != _getpid():
        with _registry_lock:
            if _reaper is None or _reaper.pid != _getpid():
                _reaper = _Reaper()


def _thread_ended(record: _ThreadLoop) -> None:
    # Runs in the ending thread while it tears down its thread-locals: no I/O here, only a
    # hand-over to the reaper thread.
    if record.closed or record.pid != _getpid() or sys.is_finalizing():
        return
    reaper = _reaper
    if reaper is not None and reaper.pid == record.pid:
        reaper.queue.put(record)


# --- loops already running in this thread: helper threads ---------------------------------------


class _Helper:
    """A persistent loop on its own thread, for `run_async` called where a loop already runs."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.pid = _getpid()
        self.loop = _loop_factory()
        self.description = f"run_async helper loop {depth}"
        self.thread = threading.Thread(
            target=self._serve, name=f"loopsafe-run-async-helper-{depth}", daemon=True
        )
        self.thread.start()

    def _serve(self) -> None:
        _local.helper_depth = self.depth
        try:
            self.loop.run_forever()
        finally:
            _shutdown_loop(self.loop, DEFAULT_SHUTDOWN_TIMEOUT, self.description)

    def usable(self) -> bool:
        return self.pid == _getpid() and self.thread.is_alive() and not self.loop.is_closed()

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


def _helper(depth: int) -> _Helper:
    helper = _helpers.get(depth)
    if helper is not None and helper.usable():
        return helper
    with _registry_lock:
        helper = _helpers.get(depth)
        if helper is None or not helper.usable():
            helper = _helpers[depth] = _Helper(depth)
    return helper


class _HelperCall:
    """One coroutine handed to a helper loop, and its outcome."""

    __slots__ = ("context", "coro", "done", "exception", "result", "task")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.context = contextvars.copy_context()
        self.done = threading.Event()
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None
        self.exception: BaseException | None = None

    def start(self) -> None:
        if sys.version_info >= (3, 11):
            task = asyncio.get_running_loop().create_task(self.coro, context=self.context)
        else:  # pragma: no cover - exercised on Python 3.10 only
            task = self.context.run(asyncio.ensure_future, self.coro)
        self.task = task
        task.add_done_callback(self._finish)

    def _finish(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.exception = asyncio.CancelledError()
        else:
            self.exception = task.exception()
            if self.exception is None:
                self.result = task.result()
        self.done.set()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _run_on_helper(
    coro: Coroutine[Any, Any, T], timeout: float | None, make_error: TimeoutFactory
) -> T:
    depth: int = getattr(_local, "helper_depth", -1) + 1
    if depth >= MAX_NESTING:
        coro.close()
        raise RuntimeError(
            f"run_async calls are nested {depth} deep (sync code called from a coroutine that "
            "run_async is running, again and again): this is almost certainly unbounded "
            "recursion. From async code, await the coroutine directly instead of run_async()."
        )
    helper = _helper(depth)
    call = _HelperCall(coro)
    try:
        helper.loop.call_soon_threadsafe(call.start)
    except RuntimeError:  # the helper was stopped between lookup and hand-over
        helper = _helper(depth)
        helper.loop.call_soon_threadsafe(call.start)
    try:
        finished = call.done.wait(timeout)
    except BaseException:
        # Interrupted in this thread: cancel the coroutine over there and let it clean up.
        helper.loop.call_soon_threadsafe(call.cancel)
        call.done.wait(DEFAULT_CLEANUP_TIMEOUT)
        raise
    if not finished:
        helper.loop.call_soon_threadsafe(call.cancel)
        call.done.wait(DEFAULT_CLEANUP_TIMEOUT)
        # Unless it finished anyway (it swallowed the cancellation): then report what it did.
        if not call.done.is_set() or isinstance(call.exception, asyncio.CancelledError):
            assert timeout is not None
            raise make_error(_describe(coro), timeout)
    exception = call.exception
    if exception is not None:
        try:
            raise exception
        finally:
            del exception, call  # no reference cycle through the traceback
    result: T = call.result
    return result


# --- Celery's per-task time budget ---------------------------------------------------------------


def set_thread_deadline(seconds: float | None, make_error: TimeoutFactory | None = None) -> None:
    """Start (or with None, end) the calling thread's task budget; for Celery's prerun signals."""
    _local.deadline = (
        None if seconds is None else _TaskDeadline(seconds, make_error or _default_timeout_error)
    )


# --- fork ----------------------------------------------------------------------------------------


def _forget_inherited() -> None:
    """In a forked child: drop the parent's loops without touching them (see `_inherited`)."""
    global _registry_lock, _reaper
    _registry_lock = threading.Lock()
    for record in _records:
        _inherited.append(record.loop)
        if record.finalizer is not None:
            record.finalizer.detach()
    for helper in _helpers.values():
        _inherited.append(helper.loop)
    _records.clear()
    _helpers.clear()
    _reaper = None
    # Only the forking thread survives in the child; its record is one of the inherited ones.
    for name in ("record", "sentinel", "deadline", "helper_depth"):
        _local.__dict__.pop(name, None)


_fork.on_fork_in_child(_forget_inherited)
