"""The deployment-wide side of a limit: atomic Lua scripts over one Redis hash slot per limit.

Keys (``<namespace>:{<name>}:…``; the braces keep them on one Redis Cluster slot):
``queue`` (ticket → arrival number, the FIFO of waiters), ``alive`` (ticket → when a waiter that
stopped polling is forgotten), ``held`` (ticket → lease end), ``starts`` (ticket → start time,
the rolling minute) and ``pause`` (set by a 429's Retry-After). Times come from Redis's own clock,
so hosts with skewed clocks agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

__all__ = ("SharedLimit",)

#: Seconds a waiter may go without polling before its place in the queue is given up (it died).
WAITER_TTL_MS = 5_000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: queue alive held starts pause seq.
# ARGV: ticket concurrency per_minute lease_ms idle_ms waiter_ttl_ms (0 means no such limit).
# Returns {1, 0} when granted, else {0, ms worth waiting before asking again (0: unknown)}.
_ACQUIRE = (
    _NOW
    + """
local ticket = ARGV[1]
local concurrency = tonumber(ARGV[2])
local per_minute = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 60000)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('ZREM', KEYS[2], gone)
end
if not redis.call('ZSCORE', KEYS[1], ticket) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[6]), ticket)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ticket)
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
local paused = redis.call('PTTL', KEYS[5])
if paused > 0 then return {0, paused} end
-- First come, first served: with k slots free, only the first k waiters in line may take one.
local rank = redis.call('ZRANK', KEYS[1], ticket)
if concurrency > 0 and rank >= concurrency - redis.call('ZCARD', KEYS[3]) then return {0, 0} end
if per_minute > 0 and rank >= per_minute - redis.call('ZCARD', KEYS[4]) then
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if oldest[2] then return {0, tonumber(oldest[2]) + 60000 - now} end
  return {0, 0}
end
redis.call('ZREM', KEYS[1], ticket)
redis.call('ZREM', KEYS[2], ticket)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ticket)
if per_minute > 0 then redis.call('ZADD', KEYS[4], now, ticket) end
return {1, 0}
"""
)

# KEYS: held. ARGV: lease_ms ticket…. Also re-creates leases Redis forgot (restart, degraded spell).
_RENEW = (
    _NOW
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return 1
"""
)

# KEYS: queue alive held. ARGV: ticket.
_LEAVE = """
for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS: pause. ARGV: ms. Only ever lengthens a pause.
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


async def _run(client: Redis, script: str, keys: list[str], *args: str | int) -> Any:
    sha = hashlib.sha1(script.encode()).hexdigest()
    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except NoScriptError:  # first use on this server, or it restarted and forgot the script
        return await client.eval(script, len(keys), *keys, *args)


@dataclass(frozen=True)
class SharedLimit:
    """One limit's Redis keys and the numbers every process applies to them."""

    prefix: str
    concurrency: int
    per_minute: int
    lease_ms: int

    def _keys(self, *names: str) -> list[str]:
        return [f"{self.prefix}:{name}" for name in names]

    async def try_acquire(self, client: Redis, ticket: str) -> tuple[bool, float]:
        """Take a slot for `ticket` if it is first in line and one is free; else seconds to wait."""
        idle_ms = self.lease_ms + 120_000  # keys of a limit nobody uses expire on their own
        keys = self._keys("queue", "alive", "held", "starts", "pause", "seq")
        args = (ticket, self.concurrency, self.per_minute, self.lease_ms, idle_ms, WAITER_TTL_MS)
        granted, wait_ms = await _run(client, _ACQUIRE, keys, *args)
        return bool(granted), int(wait_ms) / 1000

    async def renew(self, client: Redis, *tickets: str) -> None:
        """Extend (or re-create) the leases of `tickets`."""
        if tickets:
            await _run(client, _RENEW, self._keys("held"), self.lease_ms, *tickets)

    async def leave(self, client: Redis, ticket: str) -> None:
        """Give back `ticket`'s slot, or its place in the queue."""
        await _run(client, _LEAVE, self._keys("queue", "alive", "held"), ticket)

    async def pause(self, client: Redis, seconds: float) -> None:
        await _run(client, _PAUSE, self._keys("pause"), max(1, int(seconds * 1000)))
