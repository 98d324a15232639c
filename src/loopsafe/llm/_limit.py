"""`limit(name)`: wait for a slot of a deployment-wide limit, falling back to a per-process one."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _fork
from .._errors import NotConfiguredError
from .._log import get_logger
from ..redis._client import loop_clients
from ._errors import LimitTimeoutError
from ._local import LocalLimit
from ._settings import Limit, Settings, current_settings, describe
from ._shared import WAITER_TTL_MS, SharedLimit

__all__ = ("Limiter", "Permit", "limit", "limiter")

_log = get_logger("loopsafe.llm")

#: Longest a Redis round trip may take before the limit falls back to this process's share.
REDIS_TIMEOUT = 2.0
#: How often a degraded limit tries Redis again.
PROBE_INTERVAL = 1.0
#: Polling pace of a waiter: a slot freed elsewhere is noticed within about this long.
POLL = 0.05
#: The longest a waiter sleeps between polls (its queue place expires after WAITER_TTL_MS).
MAX_SLEEP = 1.0
#: A Retry-After longer than this is cut to it: one bad header must not stall the deployment.
MAX_PAUSE = 60.0
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)

T = TypeVar("T")


async def _on_redis(operation: Callable[[Redis], Awaitable[T]]) -> T:
    """Run `operation` on this loop's loopsafe.redis client within REDIS_TIMEOUT."""
    clients = loop_clients()
    return await clients.deadlines.run(operation(clients.client()), REDIS_TIMEOUT)


@dataclass(frozen=True)
class Permit:
    """One slot, held from `Limiter.acquire` until `Limiter.release`."""

    ticket: str
    heartbeat: asyncio.Task[None]


class Limiter:
    """One named limit in this process: the Redis-coordinated rules, and its fallback share."""

    def __init__(self, name: str, limit: Limit, namespace: str) -> None:
        self.name = name
        self.limit = limit
        self.shared = SharedLimit(
            prefix=f"{namespace}:{{{name}}}",
            concurrency=limit.concurrency or 0,
            per_minute=limit.per_minute or 0,
            lease_ms=max(1, int(limit.lease * 1000)),
        )
        self.local = LocalLimit(limit.share(limit.concurrency), limit.share(limit.per_minute))
        self.degraded = False
        self._next_probe = 0.0
        self._state_lock = threading.Lock()

    async def acquire(self) -> Permit:
        """Wait in line for a slot; raises `LimitTimeoutError` after `Limit.max_wait` seconds."""
        ticket = uuid.uuid4().hex
        deadline = time.monotonic() + self.limit.max_wait
        try:
            while True:
                granted, wait = await self._try(ticket)
                if granted:
                    # Every slot keeps a lease in Redis, also one granted while Redis was away:
                    # once it is back, the deployment's count includes it.
                    heartbeat = asyncio.create_task(
                        self._renew(ticket), name=f"loopsafe.llm lease {self.name}"
                    )
                    return Permit(ticket, heartbeat)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout()
                # Jitter keeps the waiters of many processes from polling in lockstep.
                pace = max(wait, POLL * random.uniform(0.5, 1.5))
                await asyncio.sleep(min(pace, MAX_SLEEP, remaining))
        except BaseException:
            await self._leave(ticket)
            raise

    async def _try(self, ticket: str) -> tuple[bool, float]:
        """Whether `ticket` got a slot; if not, the seconds worth waiting before asking again."""
        if not self.degraded or time.monotonic() >= self._next_probe:
            try:
                if self.degraded:
                    # Back: first tell Redis about the slots taken while it was away.
                    await _on_redis(lambda r: self.shared.renew(r, *self.local.held()))
                granted, wait = await _on_redis(lambda r: self.shared.try_acquire(r, ticket))
            except _REDIS_FAILURES as exc:
                self._degrade(exc)
            else:
                self._recoordinate()
                if granted:
                    self.local.record(ticket)
                return granted, wait
        return self.local.try_acquire(ticket, waiter_ttl=WAITER_TTL_MS / 1000)

    def _degrade(self, exc: BaseException) -> None:
        with self._state_lock:
            self._next_probe = time.monotonic() + PROBE_INTERVAL
            if self.degraded:
                return
            self.degraded = True
        _log.warning(
            "loopsafe.llm_limit_degraded",
            limit=self.name,
            error=f"{type(exc).__name__}: {exc}",
            concurrency=self.local.concurrency,
            per_minute=self.local.per_minute,
        )

    def _recoordinate(self) -> None:
        with self._state_lock:
            if not self.degraded:
                return
            self.degraded = False
        _log.warning("loopsafe.llm_limit_recoordinated", limit=self.name)

    async def _renew(self, ticket: str) -> None:
        # A live holder keeps its lease; only a process that died lets it run out.
        while True:
            await asyncio.sleep(self.limit.lease / 3)
            with contextlib.suppress(*_REDIS_FAILURES):
                await _on_redis(lambda r: self.shared.renew(r, ticket))

    async def release(self, permit: Permit) -> None:
        """Give the slot back."""
        permit.heartbeat.cancel()
        await self._leave(permit.ticket)

    async def _leave(self, ticket: str) -> None:
        self.local.leave(ticket)
        if not self.degraded:
            # Best effort: a slot Redis does not hear about is freed when its lease runs out.
            with contextlib.suppress(*_REDIS_FAILURES):
                await _on_redis(lambda r: self.shared.leave(r, ticket))

    async def pause(self, seconds: float) -> None:
        """Hold back every new call of this limit, in every process, for `seconds` (≤ 60)."""
        seconds = min(max(seconds, 0.0), MAX_PAUSE)
        self.local.pause(seconds)
        _log.warning("loopsafe.llm_limit_paused", limit=self.name, seconds=seconds)
        if not self.degraded:
            with contextlib.suppress(*_REDIS_FAILURES):
                await _on_redis(lambda r: self.shared.pause(r, seconds))

    def _timeout(self) -> LimitTimeoutError:
        return LimitTimeoutError(
            f"No slot of the LLM limit {self.name!r} ({describe(self.limit)}, shared by every "
            f"process) within max_wait={self.limit.max_wait:g} s; nothing was sent. Raise "
            "Limit.max_wait, raise the limit if the provider allows it, or send less work at once."
        )


_limiters: dict[tuple[int, str], Limiter] = {}
_limiters_lock = threading.Lock()


def limiter(name: str, settings: Settings | None = None) -> Limiter | None:
    """This process's `Limiter` for `name` under the current settings, or None if unlimited."""
    settings = settings or current_settings()
    found = settings.limits.get(name)
    if found is None:
        return None
    key = (settings.version, name)
    with _limiters_lock:
        made = _limiters.get(key)
        if made is None:
            for stale in [k for k in _limiters if k[0] != settings.version]:
                del _limiters[stale]  # its holders keep their own reference until they release
            made = _limiters[key] = Limiter(name, found, settings.namespace)
        return made


@contextlib.asynccontextmanager
async def limit(name: str) -> AsyncIterator[None]:
    """Hold one slot of the deployment-wide limit `name` for the duration of the block.

    Waits in line (first come, first served across every process) while the limit is reached,
    the rolling minute is full, or a provider's 429 asked everyone to wait. The slot is given back
    when the block ends; a process that dies holding it loses it after `Limit.lease` seconds. With
    Redis unreachable each process keeps to its share and ``loopsafe.llm_limit_degraded`` is
    logged; coordination resumes by itself when Redis is back.

    Raises `LimitTimeoutError` after `Limit.max_wait` seconds in line, and `NotConfiguredError`
    (a `LookupError`) for a name `configure(limits=...)` did not set.

    .. versionadded:: 0.1.0
    """
    found = limiter(name)
    if found is None:
        configured = sorted(current_settings().limits)
        raise NotConfiguredError(
            f"No LLM limit named {name!r}: pass limits={{{name!r}: Limit(...)}} to "
            f"loopsafe.llm.configure() (configured: {', '.join(map(repr, configured)) or 'none'})"
        )
    permit = await found.acquire()
    try:
        yield
    finally:
        await found.release(permit)


def _forget_after_fork() -> None:
    # The parent's slots are the parent's: a child starts with none held and no queue places.
    global _limiters_lock
    _limiters_lock = threading.Lock()
    _limiters.clear()


_fork.on_fork_in_child(_forget_after_fork)
