"""The per-process side of a limit: what one process allows itself while Redis is unreachable."""

from __future__ import annotations

import collections
import threading
import time

__all__ = ("LocalLimit",)


class LocalLimit:
    """The same rules as the shared limit (FIFO queue, slots, rolling minute, pause), in memory.

    Shared by every loop and thread of the process, hence a thread lock rather than asyncio
    primitives. It also counts the slots this process holds through Redis, so a process that
    loses Redis mid-call does not start its share on top of calls already in flight.
    """

    def __init__(self, concurrency: int | None, per_minute: int | None) -> None:
        self.concurrency = concurrency
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._queue: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._held: set[str] = set()
        self._starts: collections.deque[float] = collections.deque()
        self._paused_until = 0.0

    def try_acquire(self, ticket: str, *, waiter_ttl: float) -> tuple[bool, float]:
        """Take a slot for `ticket` if it is first in line and one is free; else seconds to wait."""
        now = time.monotonic()
        with self._lock:
            for waiter, alive_until in list(self._queue.items()):
                if alive_until < now:
                    del self._queue[waiter]
            self._queue[ticket] = now + waiter_ttl
            self._forget_old_starts(now)
            if self._paused_until > now:
                return False, self._paused_until - now
            # First come, first served: with k slots free, only the first k in line take one.
            rank = list(self._queue).index(ticket)
            if self.concurrency is not None and rank >= self.concurrency - len(self._held):
                return False, 0.0
            if self.per_minute is not None and rank >= self.per_minute - len(self._starts):
                return False, (self._starts[0] + 60 - now) if self._starts else 0.0
            self._take(ticket, now)
            return True, 0.0

    def record(self, ticket: str) -> None:
        """Count a slot the shared limit granted to this process."""
        with self._lock:
            self._take(ticket, time.monotonic())

    def _take(self, ticket: str, now: float) -> None:
        self._queue.pop(ticket, None)
        self._held.add(ticket)
        self._forget_old_starts(now)
        self._starts.append(now)

    def _forget_old_starts(self, now: float) -> None:
        while self._starts and self._starts[0] <= now - 60:
            self._starts.popleft()

    def leave(self, ticket: str) -> None:
        with self._lock:
            self._queue.pop(ticket, None)
            self._held.discard(ticket)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def held(self) -> list[str]:
        """Tickets of every slot this process holds."""
        with self._lock:
            return list(self._held)
