"""A process-wide connection quota that event loops in different threads wait on fairly."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import weakref
from collections.abc import Callable

from ._errors import BoundExceededError
from ._fork import on_fork_in_child

__all__ = ("ConnectionQuota",)

_quotas: weakref.WeakSet[ConnectionQuota] = weakref.WeakSet()
#: Seconds between two requests of a waiting loop for another loop to close an idle connection.
RELIEF_EVERY = 0.1


class ConnectionQuota:
    """At most `limit` connections open at once across every loop (thread) of this process.

    SQLAlchemy's pools are per loop, so each already caps itself at ``pool_size + max_overflow``;
    this cap is what keeps a process that runs more loops than its budget planned for (say a
    threads pool grown at runtime) inside its share. Waiters are served first come, first served,
    each woken on its own loop with ``call_soon_threadsafe``.
    """

    def __init__(self, limit: int, *, on_pressure: Callable[[], None] | None = None) -> None:
        self.limit = limit
        # Called when a loop starts waiting: slots are often held by *idle* connections pooled
        # on other loops, which must be asked to close one or the wait would never end.
        self._on_pressure = on_pressure
        self._used = 0
        self._lock = threading.Lock()
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = (
            collections.deque()
        )
        _quotas.add(self)

    @property
    def used(self) -> int:
        """Slots held right now."""
        return self._used

    @property
    def waiting(self) -> bool:
        """Whether some loop is waiting for a slot."""
        return bool(self._waiters)

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting up to `timeout` seconds; raises `BoundExceededError` after that."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._used < self.limit and not self._waiters:
                self._used += 1
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        deadline = loop.time() + timeout
        try:
            while True:
                if self._on_pressure is not None:
                    self._on_pressure()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise BoundExceededError(timeout, 0.0, settled=True)
                # Asked again and again: one request can land on a loop that closes nothing (its
                # idle connection went to another waiter, or it started a call meanwhile).
                done, _ = await asyncio.wait((waiter,), timeout=min(remaining, RELIEF_EVERY))
                if done:
                    return
        except BaseException:  # the wait is over (BoundExceededError) or was cancelled
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just now: pass it on
            else:
                # Cancelled first: a release that already picked this waiter finds it done in
                # _hand_over and passes the slot on.
                waiter.cancel()
                self._forget(loop, waiter)
            raise

    def _forget(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
        # ValueError: a release already handed this waiter the slot; its callback will find the
        # waiter done and pass the slot on, so nothing leaks.
        with self._lock, contextlib.suppress(ValueError):
            self._waiters.remove((loop, waiter))

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if there is one, else to the pool of free slots."""
        with self._lock:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._hand_over, waiter)
                except RuntimeError:  # that waiter's loop is closed; try the next one
                    continue
                return
            self._used = max(0, self._used - 1)

    def _hand_over(self, waiter: asyncio.Future[None]) -> None:
        # Runs on the waiter's loop. It may have timed out or been cancelled in the meantime.
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)

    def _reset(self) -> None:
        # In a forked child no inherited connection counts: the parent owns them.
        self._lock = threading.Lock()
        self._used = 0
        self._waiters.clear()


def _reset_all() -> None:
    for quota in list(_quotas):
        quota._reset()


on_fork_in_child(_reset_all)
