"""Deadlines for many concurrent operations on one loop, enforced by a single shared timer.

`asyncio.timeout()` schedules (and cancels) a timer handle per call, which costs about as much as
everything else `publish` adds to a Redis round trip; this keeps one timer per loop instead and
costs a clock read, a dict insert and a dict delete per call. Semantics match `asyncio.timeout`:
an operation past its deadline is cancelled and the cancellation turns into `TimeoutError`; a
cancellation from outside stays a cancellation.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Awaitable
from time import monotonic
from typing import Any, TypeVar

__all__ = ("Deadlines",)

T = TypeVar("T")

# The shared timer tells its own cancellations from others' with Task.uncancel(), new in 3.11;
# before that each operation gets a timer of its own.
_UNCANCEL = sys.version_info >= (3, 11)
if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - redis-py depends on async-timeout on these versions
    from async_timeout import timeout as _timeout

#: Never re-arm the timer sooner than this: bounds the timer's own cost under heavy load.
_MIN_TICK = 0.005


class Deadlines:
    """Runs awaitables under deadlines for the tasks of one event loop (Python 3.11+).

    Use one instance per loop, only from inside that loop. Deadlines are `time.monotonic()`
    readings rather than ``loop.time()``: the same clock on asyncio's loops, a C call instead of a
    Python method, and uvloop's loop time is a per-iteration cache that would need re-reading.
    """

    # Nothing here refers to the loop (not even a TimerHandle, which does): this lives in the
    # loop's own loopsafe state, and a reference back would leave the loop to the cyclic collector.
    __slots__ = ("_armed_for", "_expired", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._armed_for = math.inf

    async def run(self, awaitable: Awaitable[T], timeout: float) -> T:
        """Await `awaitable` in the current task; `TimeoutError` if it takes over `timeout` s."""
        task = asyncio.current_task()
        if task is None or not _UNCANCEL:  # pragma: no cover - Python 3.10, or outside a task
            try:
                async with _timeout(timeout):
                    return await awaitable
            except asyncio.TimeoutError:
                # On Python 3.10 this is not yet the builtin TimeoutError our callers catch.
                raise TimeoutError from None
        cancelling = self.enter(task, timeout)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self.timed_out(task, cancelling):
                raise TimeoutError from None
            raise
        finally:
            self.leave(task)

    def enter(self, task: asyncio.Task[Any], timeout: float) -> int:
        """Start `task`'s deadline; returns the token for `timed_out`."""
        deadline = monotonic() + timeout
        self._waiting[task] = deadline
        if deadline < self._armed_for:
            self._arm(deadline)
        return task.cancelling()

    def timed_out(self, task: asyncio.Task[Any], cancelling: int) -> bool:
        """Whether the `CancelledError` `task` is handling came from its deadline (and only that)."""
        return task in self._expired and task.uncancel() <= cancelling

    def leave(self, task: asyncio.Task[Any]) -> None:
        """End `task`'s deadline (call in ``finally``)."""
        del self._waiting[task]
        if self._expired:  # almost always empty: skip the set lookup
            self._expired.discard(task)

    def _arm(self, deadline: float) -> None:
        # A timer armed earlier for a later deadline is not cancelled; it finds itself stale and ends.
        self._armed_for = deadline
        asyncio.get_running_loop().call_later(deadline - monotonic(), self._expire, deadline)

    def _expire(self, deadline: float) -> None:
        if deadline != self._armed_for:
            return
        self._armed_for = math.inf
        now = monotonic()
        upcoming = math.inf
        for task, task_deadline in self._waiting.items():
            if task_deadline <= now:
                if task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            elif task_deadline < upcoming:
                upcoming = task_deadline
        if upcoming < math.inf:
            # uvloop may fire a timer slightly before its deadline by monotonic(): re-arming
            # for the same deadline then is what makes it count.
            self._arm(max(upcoming, now + _MIN_TICK))
