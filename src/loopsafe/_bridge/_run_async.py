"""run_async: run a coroutine from sync code on a persistent event loop, and close those loops.

Where the coroutine runs: on the calling thread's own loop (the default, see `_runner`); on this
process's shared loop thread once `use_process_loop` switched it on (``LOOPSAFE_RUN_ASYNC_LOOP=
process``, or ``install(app, loop="process")`` in a threads-pool worker), or when the per-thread
loops reached their cap (``LOOPSAFE_LOOPS_PER_PROCESS``); on a helper loop thread when the calling
thread is already running a loop (see `_loop_thread`).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .._validate import seconds
from . import _limits, _loop_thread, _runner

__all__ = (
    "IDLE_ENV",
    "LOOPS_ENV",
    "MODE_ENV",
    "close_all_loops",
    "close_thread_loop",
    "loop_settings",
    "run_async",
    "set_loop_factory",
    "use_process_loop",
)

T = TypeVar("T")

#: ``thread`` (the default: each thread its own loop) or ``process`` (one shared loop).
MODE_ENV = "LOOPSAFE_RUN_ASYNC_LOOP"
#: The most loops a process keeps for run_async (the budget's loops per process): threads beyond
#: it share the process loop, which counts as one of them.
LOOPS_ENV = "LOOPSAFE_LOOPS_PER_PROCESS"
#: Seconds after which an idle per-thread loop is closed (``never`` keeps it).
IDLE_ENV = "LOOPSAFE_RUN_ASYNC_IDLE_CLOSE"


class _Settings:
    """How this process makes run_async's loops, and whether they share one loop thread."""

    __slots__ = ("blocked_after", "loop_factory", "max_loops", "process_loop")

    def __init__(self) -> None:
        # asyncio.new_event_loop makes what asyncio.Runner makes without a loop_factory.
        self.loop_factory: _runner.LoopFactory = asyncio.new_event_loop
        # None until the first call reads the environment (or use_process_loop decides).
        self.process_loop: bool | None = None
        self.blocked_after: float | None = None
        self.max_loops: int | None = None

    def resolve(self) -> bool:
        """Read the environment once, on the first call nobody configured in code; the mode."""
        if self.process_loop is None:
            self.max_loops = _env_loops()
            _runner.set_idle_close(_env_idle())
            self.process_loop = _env_mode()
        return self.process_loop


def _env_mode() -> bool:
    raw = os.environ.get(MODE_ENV, "").strip().lower()
    if raw in ("", "thread"):
        return False
    if raw == "process":
        return True
    raise ValueError(
        f"{MODE_ENV} must be 'thread' (each thread runs its coroutines on its own loop) or "
        f"'process' (every thread hands them to one loop of the process), got {raw!r}"
    )


def _env_loops() -> int | None:
    raw = os.environ.get(LOOPS_ENV, "").strip()
    if not raw:
        return None
    try:
        loops = int(raw)
    except ValueError:
        loops = 0
    if loops < 1:
        raise ValueError(
            f"{LOOPS_ENV} must be a whole number >= 1 (the loops per process your connection "
            f"budget was sized for, e.g. gunicorn's --threads), got {raw!r}"
        )
    return loops


def _env_idle() -> float | None:
    raw = os.environ.get(IDLE_ENV, "").strip().lower()
    if not raw:
        return _limits.DEFAULT_IDLE_CLOSE
    if raw == "never":
        return None
    try:
        return seconds(IDLE_ENV, float(raw))
    except ValueError:
        raise ValueError(
            f"{IDLE_ENV} must be a number of seconds > 0 or 'never', got {raw!r}"
        ) from None


_settings = _Settings()


def use_process_loop(enabled: bool = True, *, blocked_after: float | None = None) -> None:
    """Run every thread's `run_async` coroutines on one shared loop of the process (or not).

    With True, each call hands its coroutine to one loop thread of the process and waits for it:
    one engine pool and one Redis client per process however many threads call, and threads that
    come and go (``flask run --with-threads``, Django's ``runserver``) cost nothing. A coroutine
    that blocks (``time.sleep``, sync I/O) holds up every thread's calls, and a call costs about
    two thread switches more than on the thread's own loop. With False (the default), each
    thread runs its coroutines on its own persistent loop. Calling it overrides
    ``LOOPSAFE_RUN_ASYNC_LOOP``; loops already open stay until closed (`close_all_loops`).

    `blocked_after` (seconds) makes the shared loop log ``loopsafe.run_async_loop_blocked``
    naming the coroutine that held it longer.

    Raises:
        TypeError, ValueError: `blocked_after` is not a finite, positive number of seconds.

    .. versionadded:: 0.1.0
    """
    if blocked_after is not None:
        blocked_after = seconds("use_process_loop() blocked_after", blocked_after)
    _settings.resolve()  # the environment's other settings still apply
    _settings.process_loop = bool(enabled)
    _settings.blocked_after = blocked_after


def set_loop_factory(loop_factory: _runner.LoopFactory) -> None:
    """Make run_async's loops with `loop_factory` from now on (`install`'s ``loop_factory``)."""
    _settings.loop_factory = loop_factory


def loop_settings() -> tuple[bool, _runner.LoopFactory]:
    """(shared process loop on, loop factory), for undoing changes in tests."""
    return _settings.resolve(), _settings.loop_factory


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


def run_async(
    coro: Coroutine[Any, Any, T],
    *,
    timeout: float | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run `coro` to completion from synchronous code and return its result.

    The coroutine runs on the calling thread's persistent event loop (created on first use, one
    per thread per process, recreated in a forked child), so loop-local resources such as
    `loopsafe.db` engines and `loopsafe.redis` clients stay pooled across calls. In a worker set
    up with ``install(app, loop="process")`` and the threads pool, every thread's coroutines run
    concurrently on one shared loop of the process instead. Called where an event loop is already
    running in this thread (sync code called from async code, an eager Celery task inside a
    FastAPI handler), the coroutine runs on a helper loop thread instead of deadlocking; this
    thread blocks until it finishes. The caller's context variables are copied in.

    `loop_factory` (as for ``asyncio.Runner``; ``uvloop.new_event_loop`` for instance) makes the
    loop when this call has to create one; an existing loop is kept. Without it, loops come from
    the factory given to `install`, else ``asyncio.new_event_loop`` (what ``asyncio.Runner`` uses);
    loopsafe calls no event-loop policy API.

    Exceptions propagate with their own type and traceback. An exception raised in the waiting
    thread while the coroutine runs (a signal handler's, ``KeyboardInterrupt``, Celery's
    ``SoftTimeLimitExceeded``) cancels the coroutine, waits up to `DEFAULT_CLEANUP_TIMEOUT`
    seconds for its ``finally`` blocks, then propagates: nothing is left running on the loop.

    Where the coroutine runs is chosen once per process by `use_process_loop` or
    ``LOOPSAFE_RUN_ASYNC_LOOP`` (``thread``, the default, or ``process``); with
    ``LOOPSAFE_LOOPS_PER_PROCESS=N`` set, N − 1 threads (at least one) get their own loop and
    the others share the process loop. A
    thread's loop is closed promptly when the thread ends, and after
    ``LOOPSAFE_RUN_ASYNC_IDLE_CLOSE`` seconds unused (60 by default, ``never`` to keep it).

    Raises:
        TypeError: `coro` is not a coroutine object.
        ValueError: `timeout` is not a finite, positive number, or a variable above is malformed.
        TimeoutError: `timeout` seconds passed; the coroutine was cancelled and its cleanup ran.
        RuntimeError: calls nested more than `MAX_NESTING` deep.

    .. versionadded:: 0.1.0
    """
    if not isinstance(coro, Coroutine):
        raise _not_a_coroutine(coro)
    make_error: _limits.TimeoutFactory = _limits.default_timeout_error
    if timeout is not None:
        try:
            timeout = seconds("run_async timeout", timeout)
        except (TypeError, ValueError):
            coro.close()
            raise
    else:
        deadline = _limits.thread_deadline()
        if deadline is not None:
            timeout = deadline.at - time.monotonic()
            make_error = deadline.error
            if timeout <= 0:
                coro.close()
                raise make_error(_limits.describe(coro), 0.0)
    factory = loop_factory or _settings.loop_factory
    # asyncio's own "is a loop running here" check without get_running_loop()'s exception, which
    # would cost more than the rest of this function on the common path.
    if asyncio._get_running_loop() is not None:
        return _run_nested(coro, timeout, make_error, factory)
    process_loop = _settings.process_loop
    if process_loop is None:
        try:
            process_loop = _settings.resolve()
        except ValueError:  # a bad LOOPSAFE_* variable: nothing runs, nothing left unawaited
            coro.close()
            raise
    if not process_loop:
        record = _runner.current_record()
        if record is None:
            # A new loop only while the process holds fewer than its cap (the shared loop, which
            # takes the threads beyond it, counts as one): thread churn cannot multiply pools.
            # With a cap of 1 the first thread still gets its own loop: a prefork child or a sync
            # worker (one calling thread, LOOPSAFE_LOOPS_PER_PROCESS=1 for its budget) keeps
            # running coroutines on its own thread, as without a cap.
            max_loops = _settings.max_loops
            record = _runner.thread_loop(
                factory, None if max_loops is None else max(max_loops - 1, 1)
            )
        if record is not None:
            return _runner.run_here(record, coro, timeout, make_error, factory)
    shared = _loop_thread.process_loop(factory, _settings.blocked_after)
    return _loop_thread.run_on(shared, coro, timeout, make_error, _limits.current_task())


def _run_nested(
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
    make_error: _limits.TimeoutFactory,
    loop_factory: _runner.LoopFactory,
) -> T:
    depth = _loop_thread.nesting_depth() + 1
    if depth >= _loop_thread.MAX_NESTING:
        coro.close()
        raise RuntimeError(
            f"run_async calls are nested {depth} deep (sync code called from a coroutine that "
            "run_async is running, again and again): this is almost certainly unbounded "
            "recursion. From async code, await the coroutine directly instead of run_async()."
        )
    helper = _loop_thread.helper(depth, loop_factory)
    return _loop_thread.run_on(helper, coro, timeout, make_error)


# --- closing ------------------------------------------------------------------------------------


def _off_loop(function: Callable[[], T]) -> T:
    """Call `function` here, or on a short-lived thread if this thread is running a loop."""
    if asyncio._get_running_loop() is None:
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


def close_thread_loop(*, timeout: float = _limits.DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
    """Close the calling thread's `run_async` loop cleanly; the next `run_async` makes a new one.

    Sync, for code outside any loop (after import-time work, before a fork); from async code,
    ``await loopsafe.aclose_all()`` closes the running loop's resources instead.

    Leftover tasks are cancelled, every loop-local resource is closed inside the loop
    (``loopsafe.aclose_all()``), async generators and the default executor are shut down, then the
    loop is closed. Each step is bounded by `timeout` seconds. Returns False if there was no loop
    or it could not be closed (it was running).

    .. versionadded:: 0.1.0
    """
    record = _runner.current_record()
    if record is None:
        return False
    return _off_loop(lambda: _runner.close_record(record, timeout))


def close_all_loops(*, timeout: float = _limits.DEFAULT_SHUTDOWN_TIMEOUT) -> int:
    """Close every `run_async` loop of this process, each cleanly (see `close_thread_loop`).

    Not to be confused with ``await loopsafe.aclose_all()``, which closes the resources of the
    one loop it runs on and keeps the loop.

    Loops of live threads are closed only while idle (a loop running a call is waited for up to
    `timeout` seconds, then left alone and logged); their threads get a new loop on their next
    call. Helper loop threads and the shared process loop are stopped (coroutines still running
    there are cancelled). Returns how many loops were closed. Celery's ``worker_shutdown`` and
    ``worker_process_shutdown`` signals call this when `install` is used, and so does ``atexit``.

    .. versionadded:: 0.1.0
    """
    return _off_loop(lambda: _close_all(timeout))


def _close_all(timeout: float) -> int:
    closed = _loop_thread.stop_all(timeout)
    for record in _runner.open_records():
        closed += _runner.close_record(record, timeout)
    return closed


def _close_at_exit() -> None:
    if _runner.open_records() or _loop_thread.running_loops():
        close_all_loops()


atexit.register(_close_at_exit)
