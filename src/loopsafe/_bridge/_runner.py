"""The per-thread runner: each thread's persistent event loop, and closing loops cleanly.

Each thread gets one event loop, created on its first `run_async` and kept for the life of the
thread (and process), so loop-local resources — a `loopsafe.db` engine's pool, a Redis client —
are reused by every later call instead of being rebuilt per call as with `asyncio.run`. The loop
runs on the calling thread itself (``run_until_complete``), which keeps a call as cheap as a bare
``loop.run_until_complete`` and lets signals (Celery's soft time limit, Ctrl-C) interrupt the wait.

Lifecycle of those loops:

- forked child: inherited loops are forgotten, never closed or used (see `forget_inherited`);
- thread ends: its loop is kept warm for the next thread that needs one (up to
  `MAX_SPARE_LOOPS`, for `SPARE_LINGER` seconds), so a server starting a thread per request reuses
  loops and their pools instead of opening and closing one per request; the others are closed at
  once, each on a closer thread of its own, so many ended threads' loops close in parallel
  (`_thread_ended`, `_Reaper`);
- loop idle for `idle_close` seconds (the main thread's after import-time work, a gunicorn
  master's before it forks): closed the same way; its thread gets a new loop on its next call;
- `close_record` (``close_thread_loop()``, ``close_all_loops()``, ``atexit``): the loop is drained
  and closed by `shutdown_loop`.

Why not ``asyncio.Runner``: it exists from Python 3.11 only (loopsafe supports 3.10), and its
``close()`` waits for cancelled tasks without a bound — one task that swallows cancellation would
hang a worker's shutdown. `shutdown_loop` keeps Runner's order (cancel leftovers, async
generators, default executor, close) with every step bounded, plus ``loopsafe.aclose_all()``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from queue import Empty, SimpleQueue
from typing import Any, NoReturn, TypeVar

from .. import _fork, _idle
from .._bound import await_bounded
from .._errors import BoundExceededError
from .._log import get_logger
from . import _limits

__all__ = (
    "LoopFactory",
    "ThreadLoop",
    "close_record",
    "forget_inherited",
    "inherited_loops",
    "open_records",
    "run_here",
    "set_idle_close",
    "shutdown_loop",
    "thread_loop",
    "warn_cleanup_timeout",
)

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

_log = get_logger("loopsafe.run_async")


class ThreadLoop:
    """One thread's persistent loop and what is needed to close it safely from elsewhere."""

    __slots__ = (
        "__weakref__",
        "closed",
        "description",
        "factory",
        "finalizer",
        "interrupt",
        "last_used",
        "lock",
        "loop",
        "pid",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: LoopFactory) -> None:
        self.loop = loop
        self.factory = factory
        self.pid = os.getpid()
        self.description = ""
        self.describe()
        # Held by the owning thread while the loop runs; closers from other threads take it so a
        # loop is never closed under a running call.
        self.lock = threading.Lock()
        self.closed = False
        # An exception a signal handler raised inside a loop callback (see _exception_handler).
        self.interrupt: BaseException | None = None
        self.finalizer: weakref.finalize[Any, Any] | None = None
        self.last_used = time.monotonic()

    def describe(self) -> None:
        """Name the loop after the thread that runs it now."""
        thread = threading.current_thread().name
        self.description = f"run_async loop 0x{id(self.loop):x} of thread {thread!r}"


class _ThreadSentinel:
    """Lives only in its thread's `threading.local`: collected when the thread ends."""

    __slots__ = ("__weakref__",)


_local = threading.local()
_records_lock = threading.Lock()
# Strong references on purpose: a loop stays here until it is closed (by its thread's end, a
# shutdown signal or atexit), never longer.
_records: set[ThreadLoop] = set()
_reaper: _Reaper | None = None
_idle_close: float | None = _limits.DEFAULT_IDLE_CLOSE
#: Loops of ended threads waiting for a new thread, newest last (under `_records_lock`).
_spares: list[ThreadLoop] = []
#: At most this many ended threads' loops are kept for reuse; the others close at once. A thread
#: per request at steady load ends about as many threads as it starts: a few spares suffice.
MAX_SPARE_LOOPS = 8
#: Seconds a spare loop waits for a new thread before it is closed with its pools.
SPARE_LINGER = 2.0
# Loops inherited across fork(). Never closed: closing one would EPOLL_CTL_DEL its self-pipe from
# the epoll instance the child shares with its parent, deafening the parent's loop. Never
# collected either (a collected open loop warns): they are held here, a few file descriptors each.
_inherited: list[asyncio.AbstractEventLoop] = []


def warn_cleanup_timeout(description: str) -> None:
    _log.warning(
        "loopsafe.run_async_cleanup_timeout",
        loop=description,
        seconds=_limits.DEFAULT_CLEANUP_TIMEOUT,
        hint="the coroutine ignored cancellation; it stays scheduled on the loop",
    )


def current_record() -> ThreadLoop | None:
    """The calling thread's open loop, if it has one."""
    record: ThreadLoop | None = getattr(_local, "record", None)
    if record is None or record.closed:
        return None
    if record.pid != os.getpid():  # forked without the at-fork hooks: forget it now
        _fork.check_pid()
        return None
    return record


def run_here(
    record: ThreadLoop,
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
    make_error: _limits.TimeoutFactory,
    loop_factory: LoopFactory,
) -> T:
    """Run `coro` on `record`, the calling thread's persistent loop."""
    try:
        record.lock.acquire()
    except BaseException:
        coro.close()
        raise
    try:
        if record.closed:  # closed by another thread (idle, shutdown) while we waited for the lock
            record.lock.release()
            # No cap here: this thread had its loop, it keeps its place.
            fresh = thread_loop(loop_factory)
            assert fresh is not None  # without a limit there is always one
            record = fresh
            record.lock.acquire()
        return _run_locked(record, coro, timeout, make_error)
    finally:
        record.last_used = time.monotonic()
        record.lock.release()


def _run_locked(
    record: ThreadLoop,
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
    make_error: _limits.TimeoutFactory,
) -> T:
    loop = record.loop
    record.interrupt = None  # one a previous call's loop.stop() raced with its task's end
    # The task copies the caller's contextvars (create_task takes a context snapshot). A bound
    # runs inside the loop: at `timeout` the coroutine is cancelled and its cleanup gets
    # DEFAULT_CLEANUP_TIMEOUT more seconds before it is left behind.
    task = loop.create_task(
        coro
        if timeout is None
        else await_bounded(coro, timeout, grace=_limits.DEFAULT_CLEANUP_TIMEOUT)
    )
    try:
        return loop.run_until_complete(task)
    except BoundExceededError as exc:
        if timeout is None:  # the coroutine's own, not our bound's
            raise
        if not exc.settled:
            warn_cleanup_timeout(record.description)
        raise make_error(_limits.describe(coro), timeout) from None
    except BaseException as exc:
        if task.done() and record.interrupt is None:
            raise
        _interrupted(record, task, exc)


def _interrupted(record: ThreadLoop, task: asyncio.Task[Any], exc: BaseException) -> NoReturn:
    """The wait was interrupted with `task` still pending: cancel it, let it clean up, re-raise."""
    interrupt, record.interrupt = record.interrupt, None
    if interrupt is not None and isinstance(exc, RuntimeError):
        # Our exception handler stopped the loop to deliver a signal's exception (see below).
        exc = interrupt
    if not task.done():
        task.cancel()
        try:
            record.loop.run_until_complete(
                asyncio.wait((task,), timeout=_limits.DEFAULT_CLEANUP_TIMEOUT)
            )
        except BaseException as second:
            _log.warning(
                "loopsafe.run_async_cleanup_interrupted",
                loop=record.description,
                error=f"{type(second).__name__}: {second}",
            )
            raise
        if not task.done():
            warn_cleanup_timeout(record.description)
        elif not task.cancelled() and task.exception() is not None:
            # Mark it retrieved: what the caller needs to see is the interrupting exception.
            _log.debug(
                "loopsafe.run_async_cleanup_failed",
                loop=record.description,
                error=repr(task.exception()),
            )
    raise exc


def _exception_handler(
    record_ref: weakref.ref[ThreadLoop],
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        record = record_ref()
        interrupts = _limits.interrupt_types()
        if (
            exc is not None
            and interrupts
            and isinstance(exc, interrupts)
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


def thread_loop(loop_factory: LoopFactory, limit: int | None = None) -> ThreadLoop | None:
    """Give the calling thread a persistent loop: an ended thread's spare one made by the same
    factory, else a new one; None if `limit` loops exist (spares not counted against reuse)."""
    _fork.check_pid()  # forked without the at-fork hooks? Then they run now.
    record: ThreadLoop | None = None
    with _records_lock:
        for index in range(len(_spares) - 1, -1, -1):
            spare = _spares[index]
            if not spare.closed and spare.factory is loop_factory:
                record = _spares.pop(index)
                break
        if record is None:
            # Counted with the loops still closing: they hold their connections until closed.
            if limit is not None and len(_records) >= limit:
                return None
            record = ThreadLoop(loop_factory(), loop_factory)
            _records.add(record)
            created = True
        else:
            created = False
    if created:
        record.loop.set_exception_handler(_exception_handler(weakref.ref(record)))
    else:
        record.describe()
    sentinel = _ThreadSentinel()
    finalizer = weakref.finalize(sentinel, _thread_ended, record)
    # Not at interpreter exit: the atexit hook closes every loop in order.
    finalizer.atexit = False
    record.finalizer = finalizer
    _local.record = record
    _local.sentinel = sentinel
    _ensure_reaper()
    _log.debug(
        "loopsafe.run_async_loop_created" if created else "loopsafe.run_async_loop_reused",
        loop=record.description,
    )
    return record


def set_idle_close(seconds: float | None) -> None:
    """Close per-thread loops idle for `seconds` (None: never)."""
    global _idle_close
    _idle_close = seconds
    reaper = _reaper
    if reaper is not None and reaper.pid == os.getpid():
        reaper.queue.put(None)  # wake it: it may be waiting on the previous setting


def open_records() -> list[ThreadLoop]:
    with _records_lock:
        return list(_records)


# --- closing ------------------------------------------------------------------------------------


def shutdown_loop(loop: asyncio.AbstractEventLoop, timeout: float, description: str) -> None:
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


def close_record(record: ThreadLoop, timeout: float, *, idle_for: float | None = None) -> bool:
    """Close `record`'s loop if it is idle; False if it stayed busy for `timeout` seconds.

    With `idle_for`, only a loop unused that many seconds, and without waiting for it.
    """
    if record.pid != os.getpid():
        return False
    if idle_for is not None:
        # A loop whose thread is making a call is not idle: leave it, do not wait for it.
        if not record.lock.acquire(blocking=False):
            return False
        if not record.closed and time.monotonic() - record.last_used < idle_for:
            record.lock.release()
            return False
        _log.debug("loopsafe.run_async_loop_idle", loop=record.description, seconds=idle_for)
    elif not record.lock.acquire(timeout=timeout):
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
            shutdown_loop(record.loop, timeout, record.description)
        finally:
            # Only now: close_all_loops() must still find (and wait on) a loop that the reaper is
            # closing, or the process could exit in the middle of it.
            with _records_lock:
                _records.discard(record)
        return True
    finally:
        record.lock.release()


# --- work on loops nobody runs ------------------------------------------------------------------


def _run_idle(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, object]]
) -> bool | None:
    """Run `make()` on `loop` from a thread of its own if `loop` is a per-thread loop that no call
    runs now (see `loopsafe._idle`); False if a call runs it, None if it is not one."""
    record = _record_of(loop)
    if record is None:
        return None
    if not record.lock.acquire(blocking=False):
        return False
    if record.closed or loop.is_running():
        record.lock.release()
        return False
    try:
        threading.Thread(
            target=_run_locked_idle, args=(record, make), name="loopsafe-idle-loop", daemon=True
        ).start()
    except BaseException:  # pragma: no cover - no thread to be had
        record.lock.release()
        raise
    return True


def _run_locked_idle(record: ThreadLoop, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
    # The record's lock was taken for us: its thread's next call waits until this is done, and
    # nobody closes the loop under us. last_used stays: this is not the thread's use.
    try:
        record.loop.run_until_complete(await_bounded(make(), _limits.DEFAULT_SHUTDOWN_TIMEOUT))
    except Exception as exc:
        _log.debug("loopsafe.run_async_idle_work_failed", loop=record.description, error=repr(exc))
    finally:
        record.lock.release()


def _record_of(loop: asyncio.AbstractEventLoop) -> ThreadLoop | None:
    with _records_lock:
        record = next((each for each in _records if each.loop is loop), None)
    return record if record is not None and record.pid == os.getpid() else None


_idle.register(_run_idle, lambda loop: _record_of(loop) is not None)


# --- threads that end ---------------------------------------------------------------------------


#: Loops closed at the same time at most. Closing is mostly waiting on servers (an engine's
#: dispose, a Redis client's close), so closers overlap well; one reaper closing loops one after
#: another (14.7 ms each) fell behind a thread-per-request server and every loop not reached yet
#: kept its connection (issue #24: 429 of 1000 requests failed with "too many clients").
MAX_PARALLEL_CLOSES = 32


class _Reaper:
    """A daemon thread that hands ended threads' and idle loops to closer threads of their own."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        # None only wakes it up (the idle setting changed).
        self.queue: SimpleQueue[ThreadLoop | None] = SimpleQueue()
        self.slots = threading.BoundedSemaphore(MAX_PARALLEL_CLOSES)
        self.thread = threading.Thread(target=self._serve, name="loopsafe-loop-reaper", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            idle = _idle_close
            waits = [] if idle is None else [idle / 4]
            if _spares:
                waits.append(SPARE_LINGER / 2)
            try:
                record = self.queue.get(timeout=max(min(waits), 0.01) if waits else None)
            except Empty:
                self._close_idle()
                continue
            if record is not None:
                self._close_soon(record)
            self._close_idle()

    def _close_soon(self, record: ThreadLoop, idle: float | None = None) -> None:
        self.slots.acquire()
        try:
            threading.Thread(
                target=self._close,
                args=(record, True, idle),
                name="loopsafe-loop-closer",
                daemon=True,
            ).start()
        except BaseException:  # pragma: no cover - no thread to be had: close it here
            self.slots.release()
            self._close(record, False, idle)

    def _close(self, record: ThreadLoop, release: bool = True, idle: float | None = None) -> None:
        try:
            close_record(record, _limits.DEFAULT_SHUTDOWN_TIMEOUT, idle_for=idle)
        except Exception as exc:  # pragma: no cover - shutdown_loop logs its own failures
            _log.warning("loopsafe.run_async_reap_failed", error=repr(exc))
        finally:
            if release:
                self.slots.release()

    def _close_idle(self) -> None:
        now = time.monotonic()
        with _records_lock:
            lingered = [spare for spare in _spares if now - spare.last_used >= SPARE_LINGER]
            for spare in lingered:
                _spares.remove(spare)
        for spare in lingered:
            self._close_soon(spare, SPARE_LINGER)
        idle = _idle_close
        if idle is None:
            return
        cutoff = now - idle
        for record in open_records():
            # Not locked: a loop running a call is not idle, and its lock says so below.
            if record.closed or record.last_used > cutoff or record.lock.locked():
                continue
            self._close_soon(record, idle)


def _ensure_reaper() -> None:
    global _reaper
    if _reaper is None or _reaper.pid != os.getpid():
        with _records_lock:
            if _reaper is None or _reaper.pid != os.getpid():
                _reaper = _Reaper()


def _thread_ended(record: ThreadLoop) -> None:
    # Runs in the ending thread while it tears down its thread-locals: no I/O here, only a
    # hand-over, to the spares or to the reaper thread.
    if record.closed or record.pid != os.getpid() or sys.is_finalizing():
        return
    reaper = _reaper
    if reaper is None or reaper.pid != record.pid:
        return
    with _records_lock:
        if len(_spares) < MAX_SPARE_LOOPS:
            _spares.append(record)
            kept = True
        else:
            kept = False
    # Either way the reaper looks: at a spare when it has lingered, at the others at once.
    reaper.queue.put(None if kept else record)


# --- fork ----------------------------------------------------------------------------------------


def inherited_loops() -> list[asyncio.AbstractEventLoop]:
    """Where a forked child keeps loops it must neither close nor let be collected."""
    return _inherited


def forget_inherited() -> None:
    """In a forked child: drop the parent's loops without touching them (see `_inherited`)."""
    global _records_lock, _reaper
    _records_lock = threading.Lock()
    for record in _records:
        _inherited.append(record.loop)
        if record.finalizer is not None:
            record.finalizer.detach()
    _records.clear()
    _spares.clear()
    _reaper = None
    # Only the forking thread survives in the child; its record is one of the inherited ones.
    for name in ("record", "sentinel"):
        _local.__dict__.pop(name, None)


_fork.on_fork_in_child(forget_inherited)
