"""Time limits and interrupts for run_async: timeouts, a Celery task's budget, signal interrupts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = (
    "DEFAULT_CLEANUP_TIMEOUT",
    "DEFAULT_IDLE_CLOSE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "TaskDeadline",
    "TimeoutFactory",
    "current_task",
    "default_timeout_error",
    "describe",
    "interrupt_types",
    "register_interrupt",
    "set_thread_deadline",
    "thread_deadline",
)

#: How long a cancelled coroutine's ``finally`` blocks may run (after a timeout, a revoke or an
#: exception raised in the waiting thread) before `run_async` gives up waiting and raises anyway.
DEFAULT_CLEANUP_TIMEOUT = 10.0
#: Bound for each step of closing a loop (leftover tasks, resources, default executor).
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: A thread's loop unused this many seconds is closed, with its pools: a loop that did import-time
#: work in the main thread (or in a gunicorn master before it forks) would otherwise keep its
#: connection for the life of the process.
DEFAULT_IDLE_CLOSE = 60.0

TimeoutFactory = Callable[[str, float], BaseException]

# Exception types that signal handlers raise to interrupt a task (Celery's SoftTimeLimitExceeded,
# registered by install()). asyncio swallows them when they land inside a plain loop callback.
_interrupt_types: tuple[type[BaseException], ...] = ()
_task = threading.local()


def default_timeout_error(what: str, seconds: float) -> BaseException:
    return TimeoutError(
        f"run_async: {what} did not finish within {seconds:g} s; it was cancelled and its cleanup "
        "ran. Raise the timeout, or make the coroutine faster."
    )


def describe(coro: Any) -> str:
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"coroutine {name}()"


def register_interrupt(exc_type: type[BaseException]) -> None:
    """Treat `exc_type`, raised by a signal handler inside a loop callback, as an interrupt."""
    global _interrupt_types
    if exc_type not in _interrupt_types:
        _interrupt_types = (*_interrupt_types, exc_type)


def interrupt_types() -> tuple[type[BaseException], ...]:
    return _interrupt_types


class TaskDeadline:
    """A Celery task's time budget, for pools that do not enforce time limits themselves."""

    __slots__ = ("at", "make_error", "seconds")

    def __init__(self, seconds: float, make_error: TimeoutFactory) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.make_error = make_error

    def error(self, what: str, _remaining: float) -> BaseException:
        """The error for running out of budget, naming the whole budget (not what was left)."""
        return self.make_error(what, self.seconds)


def set_thread_deadline(
    seconds: float | None, make_error: TimeoutFactory | None = None, *, task: str | None = None
) -> None:
    """Start (or with None, end) the calling thread's task budget; for Celery's prerun signals.

    `task` names the running Celery task (``name[id]``): the process loop labels the task's
    coroutine with it, to cancel it on a revoke and to say which task blocked the loop.
    """
    _task.deadline = (
        None if seconds is None else TaskDeadline(seconds, make_error or default_timeout_error)
    )
    _task.label = task


def thread_deadline() -> TaskDeadline | None:
    deadline: TaskDeadline | None = getattr(_task, "deadline", None)
    return deadline


def current_task() -> str | None:
    """The label of the Celery task this thread runs, if `set_thread_deadline` named one."""
    label: str | None = getattr(_task, "label", None)
    return label
