"""The elastic ledger in Redis: atomic Lua scripts over the leases of one `BudgetPlan`.

Keys (``loopsafe:ledger:{<plan name>}:…``; the braces keep them on one Redis Cluster slot):
``leases`` (ticket → role, one entry per connection in use), ``total`` and ``inuse`` (role →
count) kept equal to it by every script, ``owners`` (owner → expiry: one owner per process and
role, kept alive by its heartbeat), ``ownrole`` (owner → role), ``own:<owner>`` (its tickets),
``q:<role>`` (ticket → arrival number: the role's first-come first-served line of waiters) and
``alive:<role>`` (ticket → when a waiter that stopped asking is dropped from the line), ``pulse``
(exists while anyone has spoken to the ledger within a lease) and ``settle``.

A ticket is ``<owner>:<number>`` and an owner ``<process token>.<id>``, so a script knows whose a
waiting ticket is and which process to tell.

Connections are handed over, not polled for: every script that frees a lease or may end a wait
(release, acquire, heartbeat, leave) ends with `hand_out`, which grants free connections to the
heads of the roles' lines, highest priority first and within the headrooms, records each grant as
its owner's lease, and PUBLISHes the granted tickets on ``loopsafe:ledger:wake:<process token>``,
one message per process. A lost message costs the waiter its next (slow) safety ask.

A lease is never renewed on its own: its owner's heartbeat keeps all of them, so a process that
dies (SIGKILL) loses every lease when its owner entry expires, and a live process pays one round
trip per heartbeat whatever it holds. Times come from Redis's own clock, so skewed hosts agree.

After the ledger was wiped (Redis restarted without persistence) or nobody could reach it for
longer than a lease, ``pulse`` is gone: the first script to notice sets ``settle`` for a grace
period, during which nothing is granted while every live holder re-registers its leases through
its heartbeat. The grace is a whole lease: a holder whose heartbeat is late by up to a lease is
still alive by the ledger's own rule, so it must have re-registered before anything is granted,
or new grants would overtake connections still in use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

__all__ = ("WAKE_CHANNEL", "Ledger", "LedgerView")

#: The channel a process listens on for its granted tickets, followed by its process token.
WAKE_CHANNEL = "loopsafe:ledger:wake:"

# Every script: KEYS prefix; ARGV limit, the number of roles, then per role (highest priority
# first) its name, priority and headroom; the script's own arguments start at ARGV[A].
_PRELUDE = (
    """
local P = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local LIMIT = tonumber(ARGV[1])
local ROLES = {}
local A = 3
for i = 1, tonumber(ARGV[2]) do
  ROLES[i] = {ARGV[A], tonumber(ARGV[A + 1]), tonumber(ARGV[A + 2])}
  A = A + 3
end
local function owner_of(ticket) return string.match(ticket, '^(.*):%d+$') end
local function drop_lease(ticket)
  local role = redis.call('HGET', P .. ':leases', ticket)
  if not role then return 0 end
  redis.call('HDEL', P .. ':leases', ticket)
  redis.call('DECR', P .. ':total')
  redis.call('HINCRBY', P .. ':inuse', role, -1)
  return 1
end
local function leave_line(role, ticket)
  redis.call('ZREM', P .. ':q:' .. role, ticket)
  redis.call('ZREM', P .. ':alive:' .. role, ticket)
end
local function reap_owners()
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', P .. ':owners', '-inf', now)) do
    for _, ticket in ipairs(redis.call('SMEMBERS', P .. ':own:' .. dead)) do drop_lease(ticket) end
    -- Its waiters died with it: none of them may be granted a connection nobody would use.
    local role = redis.call('HGET', P .. ':ownrole', dead)
    if role then
      for _, ticket in ipairs(redis.call('ZRANGE', P .. ':q:' .. role, 0, -1)) do
        if owner_of(ticket) == dead then leave_line(role, ticket) end
      end
    end
    redis.call('DEL', P .. ':own:' .. dead)
    redis.call('ZREM', P .. ':owners', dead)
    redis.call('HDEL', P .. ':ownrole', dead)
  end
end
local function reap_waiters(role)
  local alive = P .. ':alive:' .. role
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
    redis.call('ZREM', P .. ':q:' .. role, gone)
    redis.call('ZREM', alive, gone)
  end
end
local function wake_up(ttl, grace)
  if redis.call('EXISTS', P .. ':pulse') == 0 then
    redis.call('SET', P .. ':settle', '1', 'PX', grace)
    redis.call('SET', P .. ':pulse', '1', 'PX', ttl)
  end
end
local function touch(owner, role, ttl, grace)
  wake_up(ttl, grace)
  redis.call('SET', P .. ':pulse', '1', 'PX', ttl)
  redis.call('ZADD', P .. ':owners', now + ttl, owner)
  redis.call('HSET', P .. ':ownrole', owner, role)
end
local function grant(owner, role, ticket)
  redis.call('HSET', P .. ':leases', ticket, role)
  redis.call('SADD', P .. ':own:' .. owner, ticket)
  redis.call('INCR', P .. ':total')
  redis.call('HINCRBY', P .. ':inuse', role, 1)
end
"""
    # Gives free connections to the heads of the lines: a role of lower priority only while its
    # headroom and every waiter of a strictly higher role still fit. `asker`'s own grant is
    # returned by its script rather than published.
    + f"""
local function hand_out(asker)
  if redis.call('PTTL', P .. ':settle') > 0 then return end
  local total = tonumber(redis.call('GET', P .. ':total') or '0')
  local woken = {{}}
  local ahead, level_waiting, level = 0, 0, nil
  for _, spec in ipairs(ROLES) do
    local role, priority, headroom = spec[1], spec[2], spec[3]
    if priority ~= level then ahead, level_waiting, level = ahead + level_waiting, 0, priority end
    local queue = P .. ':q:' .. role
    while LIMIT - total - headroom - ahead > 0 do
      local head = redis.call('ZRANGE', queue, 0, 0)[1]
      if not head then break end
      local expiry = redis.call('ZSCORE', P .. ':alive:' .. role, head)
      leave_line(role, head)
      local owner = owner_of(head)
      local lives = owner and redis.call('ZSCORE', P .. ':owners', owner)
      if expiry and tonumber(expiry) > now and lives and tonumber(lives) > now then
        grant(owner, role, head)
        total = total + 1
        if head ~= asker then
          local channel = '{WAKE_CHANNEL}' .. string.match(owner, '^([^.]*)')
          woken[channel] = (woken[channel] and woken[channel] .. ' ' or '') .. head
        end
      end
    end
    level_waiting = level_waiting + redis.call('ZCARD', queue)
  end
  for channel, tickets in pairs(woken) do redis.call('PUBLISH', channel, tickets) end
end
"""
)

# ARGV[A…]: owner role ticket ttl_ms grace_ms waiter_ttl_ms, then tickets of this owner to give
# back first (released in this process, their own release maybe still on its way: a process that
# gives a lease back and asks again at once must not find its own old lease in the way).
# Returns 1 if granted, 0 if the ticket waits in line.
_ACQUIRE = (
    _PRELUDE
    + """
local owner, role, ticket = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local ttl = tonumber(ARGV[A + 3])
-- The hot path: no reaping here (heartbeats do it, every few hundred ms), and the owner is only
-- registered if it is not yet, so a process that dies before its first heartbeat is reaped too.
wake_up(ttl, tonumber(ARGV[A + 4]))
if redis.call('ZADD', P .. ':owners', 'NX', now + ttl, owner) == 1 then
  redis.call('HSET', P .. ':ownrole', owner, role)
end
for i = A + 6, #ARGV do
  if drop_lease(ARGV[i]) == 1 then redis.call('SREM', P .. ':own:' .. owner, ARGV[i]) end
end
if redis.call('HEXISTS', P .. ':leases', ticket) == 1 then return 1 end
local queue = P .. ':q:' .. role
if not redis.call('ZSCORE', queue, ticket) then
  redis.call('ZADD', queue, redis.call('INCR', P .. ':seq'), ticket)
end
redis.call('ZADD', P .. ':alive:' .. role, now + tonumber(ARGV[A + 5]), ticket)
hand_out(ticket)
return redis.call('HEXISTS', P .. ':leases', ticket)
"""
)

# ARGV[A…]: owner role ticket. Gives back a lease, or a place in the line, and hands out.
_RELEASE = (
    _PRELUDE
    + """
local owner, role, ticket = ARGV[A], ARGV[A + 1], ARGV[A + 2]
if drop_lease(ticket) == 1 then
  redis.call('SREM', P .. ':own:' .. owner, ticket)
else
  leave_line(role, ticket)
end
hand_out(nil)
return 1
"""
)

# ARGV[A…]: owner role ttl_ms grace_ms idle_ms issued n_keep keep… n_held held… n_new new….
# Keeps the owner alive and makes its leases in the ledger what the process really holds:
# registers `new` (granted while Redis was unreachable), and all of `held` if the ledger had lost
# the owner (restart, long outage); drops tickets issued up to `issued` that the process no longer
# keeps (a release that never arrived, a grant whose reply was lost). A ticket issued later is
# left alone: its grant may be on its way. Held tickets are not re-added while the owner is known:
# one given back just after the snapshot would come back as a phantom. Then hands out what the
# reaped owners and waiters left. Returns {total, settling ms, then per role: in use, waiting,
# live owners}.
_HEARTBEAT = (
    _PRELUDE
    + """
local owner, role = ARGV[A], ARGV[A + 1]
local known = redis.call('ZSCORE', P .. ':owners', owner)
touch(owner, role, tonumber(ARGV[A + 2]), tonumber(ARGV[A + 3]))
reap_owners()
local idle, issued = tonumber(ARGV[A + 4]), tonumber(ARGV[A + 5])
local i = A + 6
local keep = {}
local n = tonumber(ARGV[i]); i = i + 1
for j = i, i + n - 1 do keep[ARGV[j]] = true end
i = i + n
local function register(from, count)
  for j = from, from + count - 1 do
    if redis.call('HSETNX', P .. ':leases', ARGV[j], role) == 1 then
      redis.call('SADD', P .. ':own:' .. owner, ARGV[j])
      redis.call('INCR', P .. ':total')
      redis.call('HINCRBY', P .. ':inuse', role, 1)
    end
  end
end
n = tonumber(ARGV[i]); i = i + 1
if not known then register(i, n) end
i = i + n
n = tonumber(ARGV[i]); i = i + 1
register(i, n)
for _, ticket in ipairs(redis.call('SMEMBERS', P .. ':own:' .. owner)) do
  local seq = tonumber(string.match(ticket, ':(%d+)$'))
  if not keep[ticket] and seq and seq <= issued then
    drop_lease(ticket)
    redis.call('SREM', P .. ':own:' .. owner, ticket)
  end
end
for _, spec in ipairs(ROLES) do reap_waiters(spec[1]) end
hand_out(nil)
local members = {}
for _, live in ipairs(redis.call('ZRANGEBYSCORE', P .. ':owners', now, '+inf')) do
  local r = redis.call('HGET', P .. ':ownrole', live)
  if r then members[r] = (members[r] or 0) + 1 end
end
local view = {tonumber(redis.call('GET', P .. ':total') or '0'), redis.call('PTTL', P .. ':settle')}
for _, spec in ipairs(ROLES) do
  local r = spec[1]
  view[#view + 1] = tonumber(redis.call('HGET', P .. ':inuse', r) or '0')
  view[#view + 1] = redis.call('ZCARD', P .. ':q:' .. r)
  view[#view + 1] = members[r] or 0
  redis.call('PEXPIRE', P .. ':q:' .. r, idle)
  redis.call('PEXPIRE', P .. ':alive:' .. r, idle)
end
for _, key in ipairs({'leases', 'total', 'inuse', 'owners', 'ownrole', 'seq', 'own:' .. owner}) do
  redis.call('PEXPIRE', P .. ':' .. key, idle)
end
return view
"""
)

# ARGV[A]: owner. A process leaving for good gives back everything at once.
_LEAVE = (
    _PRELUDE
    + """
redis.call('ZADD', P .. ':owners', 0, ARGV[A])
reap_owners()
hand_out(nil)
return 1
"""
)

_SHAS = {
    script: hashlib.sha1(script.encode()).hexdigest()
    for script in (_ACQUIRE, _RELEASE, _HEARTBEAT, _LEAVE)
}


@dataclass(frozen=True)
class LedgerView:
    """The ledger as a heartbeat last saw it: in use, waiting and live processes, by role."""

    total: int
    settling: float
    in_use: dict[str, int]
    waiting: dict[str, int]
    members: dict[str, int]


@dataclass(frozen=True)
class Ledger:
    """One plan's ledger: its key prefix, its elastic roles and the numbers every process applies.

    `roles` are ``(name, priority, headroom)``, highest priority first.
    """

    prefix: str
    limit: int
    roles: tuple[tuple[str, int, int], ...]
    lease_ms: int
    grace_ms: int
    waiter_ms: int
    idle_ms: int = 3_600_000

    @classmethod
    def for_plan(
        cls,
        name: str,
        limit: int,
        roles: Sequence[tuple[str, int, int]],
        *,
        lease: float,
        grace: float,
        waiter: float,
    ) -> Ledger:
        return cls(
            prefix=f"loopsafe:ledger:{{{name}}}",
            limit=limit,
            roles=tuple(sorted(roles, key=lambda role: -role[1])),
            lease_ms=max(1, int(lease * 1000)),
            grace_ms=max(1, int(grace * 1000)),
            waiter_ms=max(1, int(waiter * 1000)),
        )

    @property
    def _head(self) -> tuple[str | int, ...]:
        return (self.limit, len(self.roles), *(part for role in self.roles for part in role))

    async def acquire(
        self, client: Redis, owner: str, role: str, ticket: str, released: Sequence[str] = ()
    ) -> bool:
        """Take a lease for `ticket`, or keep its place in its role's line (False)."""
        args = (*self._head, owner, role, ticket, self.lease_ms, self.grace_ms, self.waiter_ms,
                *released)  # fmt: skip
        return bool(await _run(client, _ACQUIRE, self.prefix, *args))

    async def release(self, client: Redis, owner: str, role: str, ticket: str) -> None:
        await _run(client, _RELEASE, self.prefix, *self._head, owner, role, ticket)

    def release_sync(self, client: SyncRedis, owner: str, role: str, ticket: str) -> None:
        _run_sync(client, _RELEASE, self.prefix, *self._head, owner, role, ticket)

    def heartbeat(
        self,
        client: SyncRedis,
        owner: str,
        role: str,
        issued: int,
        keep: Sequence[str],
        held: Sequence[str],
        new: Sequence[str],
    ) -> LedgerView:
        args = (*self._head, owner, role, self.lease_ms, self.grace_ms, self.idle_ms, issued,
                len(keep), *keep, len(held), *held, len(new), *new)  # fmt: skip
        reply = _run_sync(client, _HEARTBEAT, self.prefix, *args)
        total, settling, *figures = (int(value) for value in reply)
        in_use, waiting, members = {}, {}, {}
        for index, (name, _, _) in enumerate(self.roles):
            in_use[name], waiting[name], members[name] = figures[3 * index : 3 * index + 3]
        return LedgerView(total, max(0, settling) / 1000, in_use, waiting, members)

    def leave(self, client: SyncRedis, owner: str) -> None:
        _run_sync(client, _LEAVE, self.prefix, *self._head, owner)


async def _run(client: Redis, script: str, prefix: str, *args: str | int) -> Any:
    try:
        return await client.evalsha(_SHAS[script], 1, prefix, *args)
    except NoScriptError:  # first use on this server, or it restarted and forgot the script
        return await client.eval(script, 1, prefix, *args)


def _run_sync(client: SyncRedis, script: str, prefix: str, *args: str | int) -> Any:
    try:
        return client.evalsha(_SHAS[script], 1, prefix, *args)
    except NoScriptError:
        return client.eval(script, 1, prefix, *args)
