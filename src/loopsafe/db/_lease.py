"""The per-process side of an elastic role: leases taken from the ledger, a heartbeat, a fallback.

One `LeaseKeeper` per process, plan and role. Checkouts take a lease with one round trip on
their own loop's Redis client; giving it back, keeping the process alive in the ledger and
noticing that Redis is gone (or back) are the job of one heartbeat thread, so nothing of that
sits on a checkout's path nor depends on any event loop being responsive: a loop blocked by
CPU work for seconds must not let its process's leases expire while its connections are in use.

A checkout that finds nothing free stays in the ledger's line: a release anywhere hands the
connection to the head of the line inside the ledger's own script and publishes the ticket, and
this process's one listener thread (`_wake`) wakes the waiter, which then holds its lease without
another round trip. A waiter also asks again every `SAFETY` s, in case a message was lost. A
lease is given back at once (the hand-over waits on it), from the checkin's own loop.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import os
import random
import threading
import time
import uuid
import weakref
from fractions import Fraction
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .._fork import on_fork_in_child
from .._log import get_logger, redact_dsn
from .._registry import LoopLocal
from ..redis._client import _default_options, _OwnedPool
from ..redis._deadline import Deadlines
from ..redis._release import release_without_io
from ._ledger import Ledger, LedgerView
from ._plan import ElasticBudget
from ._pressure import PoolPressure
from ._wake import listener_for

__all__ = ("LeaseKeeper", "LeaseTimeout", "keeper_for")

_log = get_logger("loopsafe.db")

#: A process that stops heartbeating (SIGKILL, frozen host) loses its leases after this long.
LEASE = 3.0
#: How often the heartbeat thread keeps the process's leases and reads the ledger.
HEARTBEAT = 0.3
#: After a wiped or long-silent ledger, nothing is granted for this long while holders
#: re-register: a whole lease, since a holder whose heartbeat is that late still counts as alive.
GRACE = LEASE
#: A waiter that stops asking (its process died) loses its place in line after this long.
WAITER = 2.0
#: Longest a Redis round trip may take on a checkout before the process falls back.
REDIS_TIMEOUT = 1.0
#: A waiter asks the ledger again after this long (with jitter up to twice), in case its
#: wake-up message was lost; the wake-up itself comes with the release.
SAFETY = 0.25
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


class LeaseTimeout(TimeoutError):
    """No lease within the checkout's timeout (the pool turns it into `PoolExhaustedError`)."""


class _LoopLedgerClients:
    """One loop's Redis clients for ledgers (one per ledger URL), and its shared deadline timer."""

    __slots__ = ("clients", "closed", "deadlines", "releases")

    def __init__(self) -> None:
        self.clients: dict[str, Redis] = {}
        self.deadlines = Deadlines()
        self.releases: set[asyncio.Task[None]] = set()
        self.closed = False

    def client(self, url: str) -> Redis:
        client = self.clients.get(url)
        if client is None:
            pool = _OwnedPool.from_url(url, **_default_options())
            pool.bind(asyncio.get_running_loop())
            client = self.clients[url] = Redis.from_pool(pool)
        return client


async def _aclose_clients(holder: _LoopLedgerClients) -> None:
    holder.closed = True
    if holder.releases:  # leases given back as the loop ends: let them arrive, briefly
        await asyncio.wait(list(holder.releases), timeout=REDIS_TIMEOUT)
    for client in list(holder.clients.values()):
        try:
            await client.aclose()
        except Exception:  # one bad client must not keep the others open
            release_without_io(client)
    holder.clients.clear()


def _drop_clients(holder: _LoopLedgerClients) -> None:
    holder.closed = True
    for client in holder.clients.values():
        release_without_io(client)
    holder.clients.clear()


_loop_clients: LoopLocal[_LoopLedgerClients] = LoopLocal(
    _LoopLedgerClients, aclose=_aclose_clients, drop=_drop_clients, name="loopsafe.db.ledger"
)


class LeaseKeeper:
    """This process's leases of one elastic role of one plan."""

    def __init__(self, budget: ElasticBudget) -> None:
        plan = budget.plan
        assert plan is not None
        self.plan = plan.name
        self.role = budget.role
        self.url = plan.ledger_url
        self.limit = plan.elastic_limit
        self.headroom = budget.headroom
        self.higher = budget.higher_roles
        self.roles = tuple(name for name, role in plan.roles.items() if role.elastic)
        self.weights = {name: Fraction(plan.roles[name].weight) for name in self.roles}
        self.headrooms = {name: plan.roles[name].headroom for name in self.roles}
        ranks = [(name, plan.roles[name].priority, self.headrooms[name]) for name in self.roles]
        self.ledger = Ledger.for_plan(
            plan.name, self.limit, ranks, lease=LEASE, grace=GRACE, waiter=WAITER
        )
        self._listener = listener_for(self.url)
        # The ledger publishes this owner's grants to the process token's channel.
        self.owner = f"{self._listener.token}.{uuid.uuid4().hex}"
        self.pid = os.getpid()
        self.fallback = False
        self.view: LedgerView | None = None
        self._lock = threading.Lock()
        self._issued = 0
        self._held: set[str] = set()
        self._pending: set[str] = set()
        self._local_line: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._outbox: collections.deque[str] = collections.deque()
        # Granted from the fallback share: the ledger hears of them when Redis is back.
        self._unregistered: set[str] = set()
        # Given back here, not yet confirmed by Redis: the next acquire drops them first.
        self._releasing: dict[str, None] = {}
        # Waiters between asks, by ticket number: the lowest arrived first, so it is the one
        # first in line (the fallback share serves first come, first served).
        self._sleepers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        # Waiting tickets the ledger granted (by number), heard from the listener.
        self._granted: set[int] = set()
        self._pressure: weakref.WeakSet[Any] = weakref.WeakSet()
        # The Databases using this keeper: once none is left and nothing is held, it leaves.
        self._users: weakref.WeakSet[Any] = weakref.WeakSet()
        self._kick = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        # Checkouts served on their first ask, and those that waited in line (counted lock-free:
        # a rare lost increment under thread contention only blurs a figure).
        self.at_once = 0
        self.after_wait = 0

    # -- what the pool calls -----------------------------------------------------------------

    @property
    def held(self) -> int:
        """Leases this process holds now."""
        return len(self._held)

    def use(self, database: Any, *, shed_idle: bool) -> None:
        """Count `database` as a user; with `shed_idle`, have its ``_relieve_pressure()`` called
        when some role waits (its idle connections hold leases)."""
        self._users.add(database)
        if shed_idle:
            self._pressure.add(database)

    async def acquire(self, timeout: float, pressure: PoolPressure | None = None) -> str:
        """Take a lease, waiting in line up to `timeout` s; its ticket, for `release`.

        A wait (not a lease granted on the first ask) is reported to `pressure`, so
        ``pool_status()["waiting"]`` and the wait histogram include checkouts waiting in line.
        Raises `LeaseTimeout` after `timeout`; a lease granted to it meanwhile goes back.
        """
        self._start()
        with self._lock:
            self._issued += 1
            number = self._issued
            ticket = f"{self.owner}:{number}"
            self._pending.add(ticket)
        deadline = time.monotonic() + timeout
        wait: int | None = None
        waited = False
        try:
            granted = await self._try(ticket)
            while not granted:
                if not waited and pressure is not None:
                    wait = pressure.wait_started()
                waited = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LeaseTimeout(timeout)
                # Jitter keeps the safety asks of many waiters from coming in lockstep; each ask
                # keeps the waiter's place in line (WAITER), settling ledger or not.
                pace = SAFETY * random.uniform(1.0, 2.0)
                if await self._wait_turn(number, min(pace, remaining)):
                    break  # handed over by a release: the ledger recorded the lease already
                granted = await self._try(ticket)
            with self._lock:
                self._pending.discard(ticket)
                self._held.add(ticket)
        except BaseException:
            with self._lock:
                self._pending.discard(ticket)
                self._local_line.pop(ticket, None)
            # Its place in line (or a grant it did not take) goes back through the heartbeat
            # thread: this task may be cancelled, and the loop may be about to close.
            self._send_release(ticket)
            raise
        finally:
            with self._lock:
                self._granted.discard(number)
            if wait is not None and pressure is not None:
                pressure.wait_ended(wait)
        if not waited:
            self.at_once += 1
        else:
            self.after_wait += 1
        return ticket

    def release(self, ticket: str) -> None:
        """Give a lease back; callable from any thread, inside a loop or not (no I/O here)."""
        with self._lock:
            if ticket not in self._held:
                return
            self._held.discard(ticket)
            if not self.fallback:
                self._releasing[ticket] = None
        if self.fallback:
            self._wake_one()
            return
        holder = _loop_clients.peek()
        if holder is None or holder.closed or holder.clients.get(self.url) is None:
            self._send_release(ticket)  # not on a loop that talks to the ledger: the thread sends
            return
        # Sent now: the ledger hands the connection to the next waiter as it gets the release.
        # An ask of this process that overtakes it carries it along (see `_try`).
        task = asyncio.get_running_loop().create_task(self._release_here(holder, ticket))
        holder.releases.add(task)
        task.add_done_callback(holder.releases.discard)

    async def _release_here(self, holder: _LoopLedgerClients, ticket: str) -> None:
        if ticket not in self._releasing:
            return  # an ask carried it
        try:
            await holder.deadlines.run(
                self.ledger.release(holder.clients[self.url], self.owner, self.role, ticket),
                REDIS_TIMEOUT,
            )
        except _REDIS_FAILURES:
            self._send_release(ticket)  # the thread tries again, and notices if Redis is gone
            return
        self._releasing.pop(ticket, None)

    def granted(self, ticket: str) -> None:
        """The listener heard that the ledger granted `ticket`: wake its waiter (any thread)."""
        with self._lock:
            if ticket not in self._pending:
                return  # it gave up meanwhile: its release drops the grant
            number = int(ticket.rpartition(":")[2])
            self._granted.add(number)
            sleeper = self._sleepers.pop(number, None)
        if sleeper is not None:
            loop, waker = sleeper
            with contextlib.suppress(RuntimeError):  # its loop closed: the waiter is gone
                loop.call_soon_threadsafe(_set_done, waker)

    # -- one attempt ---------------------------------------------------------------------------

    async def _try(self, ticket: str) -> bool:
        if not self.fallback:
            # Carried by this ask, so their own sends are skipped; if the ask fails, the
            # heartbeat's sync drops them from the ledger.
            released = list(self._releasing)
            for done in released:
                self._releasing.pop(done, None)
            try:
                clients = _loop_clients.get()
                client = clients.client(self.url)
                granted = await clients.deadlines.run(
                    self.ledger.acquire(client, self.owner, self.role, ticket, released),
                    REDIS_TIMEOUT,
                )
            except _REDIS_FAILURES as error:
                self._enter_fallback(error)
            else:
                return granted
        return self._try_local(ticket)

    def _try_local(self, ticket: str) -> bool:
        """Redis is unreachable: grant from this process's fallback share, first come first served."""
        share = self.fallback_share()
        with self._lock:
            self._local_line.setdefault(ticket, None)
            rank = list(self._local_line).index(ticket)
            free = share - len(self._held)
            if rank < free:
                del self._local_line[ticket]
                self._unregistered.add(ticket)
                return True
        return False

    def fallback_share(self) -> int:
        """Connections this process allows itself while Redis is unreachable.

        ``floor(limit × weight / Σ live processes × their role's weight)`` over the processes the
        ledger last showed (this one included): the shares of every process the ledger knew add
        up to at most the limit. A process that never reached the ledger knows nobody, so it
        allows itself nothing and waits for Redis.
        """
        view = self.view
        if view is None:
            return 0
        members = dict(view.members)
        members[self.role] = max(1, members.get(self.role, 0))
        weights = sum(Fraction(count) * self.weights.get(name, Fraction(1))
                      for name, count in members.items() if name in self.weights)  # fmt: skip
        return int(Fraction(self.limit) * self.weights[self.role] / weights)

    async def _wait_turn(self, number: int, seconds: float) -> bool:
        """Wait up to `seconds` for the ledger to hand this waiter a lease (True), or for a lease
        given back in this process while Redis is unreachable (False: ask again)."""
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if number in self._granted:
                return True
            self._sleepers[number] = (loop, waker)
        try:
            await asyncio.wait((waker,), timeout=seconds)
        finally:
            with self._lock:
                self._sleepers.pop(number, None)
        return number in self._granted

    def _wake_one(self) -> None:
        """Wake this process's earliest waiter: a lease of the fallback share just came back."""
        with self._lock:
            while self._sleepers:
                loop, waker = self._sleepers.pop(min(self._sleepers))
                try:
                    loop.call_soon_threadsafe(_set_done, waker)
                except RuntimeError:  # that loop is closed; wake the next one
                    continue
                return

    # -- fallback ------------------------------------------------------------------------------

    def _enter_fallback(self, error: BaseException) -> None:
        with self._lock:
            if self.fallback:
                return
            self.fallback = True
        _log.warning(
            "loopsafe.db.ledger_fallback",
            plan=self.plan,
            role=self.role,
            ledger=redact_dsn(self.url),
            error=f"{type(error).__name__}: {error}",
            share=self.fallback_share(),
            held=len(self._held),
            pid=os.getpid(),
        )
        self._kick.set()

    def _rejoin(self) -> None:
        with self._lock:
            if not self.fallback:
                return
            self.fallback = False
        _log.info(
            "loopsafe.db.ledger_rejoined",
            plan=self.plan,
            role=self.role,
            ledger=redact_dsn(self.url),
            held=len(self._held),
            pid=os.getpid(),
        )

    # -- the heartbeat thread --------------------------------------------------------------------

    def _send_release(self, ticket: str) -> None:
        self._outbox.append(ticket)
        self._start()
        self._kick.set()

    def _start(self) -> None:
        if self._thread is not None or self._stopped or os.getpid() != self.pid:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"loopsafe.db ledger {self.plan}/{self.role}", daemon=True
            )
        self._listener.join(self)
        self._thread.start()

    def _run(self) -> None:
        client = SyncRedis.from_url(
            self.url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        next_beat = 0.0
        try:
            while not self._stopped:
                now = time.monotonic()
                try:
                    self._flush(client)
                    if now >= next_beat:
                        next_beat = now + HEARTBEAT
                        self._beat(client)
                        if self._unused():
                            break
                except Exception as error:  # the thread must outlive any one failure
                    self._enter_fallback(error)
                self._kick.wait(max(0.0, next_beat - time.monotonic()))
                self._kick.clear()
            if self._stopped and os.getpid() == self.pid:
                with contextlib.suppress(*_REDIS_FAILURES):
                    self.ledger.leave(client, self.owner)
        finally:
            self._listener.leave(self)
            client.close()

    def _unused(self) -> bool:
        """Stop (and leave the ledger) once no Database uses this keeper and nothing is held."""
        with _keepers_lock:
            if self._users or self._held or self._pending or self._outbox:
                return False
            self._stopped = True
            key = (self.url, self.plan, self.role)
            if _keepers.get(key) is self:
                del _keepers[key]
        return True

    def _flush(self, client: SyncRedis) -> None:
        """Send the releases queued by checkins and given-up waits (the ledger hands them out)."""
        while self._outbox and not self.fallback:
            ticket = self._outbox.popleft()
            try:
                self.ledger.release_sync(client, self.owner, self.role, ticket)
            except _REDIS_FAILURES as error:
                # The heartbeat's sync drops it from the ledger once Redis answers again.
                self._enter_fallback(error)
            self._releasing.pop(ticket, None)
        if self.fallback:
            for _ in range(len(self._outbox)):  # the fallback share has room again
                self._wake_one()
            self._outbox.clear()
            self._releasing.clear()  # the heartbeat's sync drops them once Redis is back

    def _beat(self, client: SyncRedis) -> None:
        with self._lock:
            issued = self._issued
            held = list(self._held)
            keep = held + list(self._pending)
            self._unregistered &= self._held
            new = list(self._unregistered)
        try:
            view = self.ledger.heartbeat(client, self.owner, self.role, issued, keep, held, new)
        except _REDIS_FAILURES as error:
            self._enter_fallback(error)
            return
        with self._lock:
            self._unregistered.difference_update(new)
        self.view = view
        self._rejoin()
        if any(view.waiting.values()):
            for owner in list(self._pressure):
                owner._relieve_pressure()

    def stop(self) -> None:
        """Stop the heartbeat and give back everything this process holds in the ledger."""
        self._stopped = True
        self._kick.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # The thread leaves the ledger on its way out; if Redis hangs, the lease expiry does.
            thread.join(timeout=3 * REDIS_TIMEOUT)

    # -- what pool_status() shows -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        view = self.view
        return {
            "plan": self.plan,
            "role": self.role,
            "mode": "fallback" if self.fallback else "ledger",
            "limit": self.limit,
            "held": len(self._held),
            "served_at_once": self.at_once,
            "served_after_wait": self.after_wait,
            "fallback_share": self.fallback_share(),
            "in_use": dict(view.in_use) if view else {},
            "waiting": dict(view.waiting) if view else {},
            "members": dict(view.members) if view else {},
            "headroom": dict(self.headrooms),
        }


def _set_done(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


_keepers: dict[tuple[str, str, str], LeaseKeeper] = {}
_keepers_lock = threading.Lock()


def keeper_for(budget: ElasticBudget) -> LeaseKeeper:
    """This process's `LeaseKeeper` for `budget`'s plan and role (made on first use)."""
    plan = budget.plan
    assert plan is not None
    key = (plan.ledger_url, plan.name, budget.role)
    keeper = _keepers.get(key)
    if keeper is None or keeper._stopped:
        with _keepers_lock:
            keeper = _keepers.get(key)
            if keeper is None or keeper._stopped:
                keeper = _keepers[key] = LeaseKeeper(budget)
                _log.info(
                    "loopsafe.db.ledger_joined",
                    plan=plan.name,
                    role=budget.role,
                    ledger=redact_dsn(keeper.url),
                    limit=keeper.limit,
                    headroom=keeper.headroom,
                    pid=os.getpid(),
                )
    return keeper


def live_keepers() -> list[LeaseKeeper]:
    return list(_keepers.values())


def _forget_after_fork() -> None:
    # The parent's leases are the parent's: a child starts with none, under an owner of its own.
    global _keepers_lock
    _keepers_lock = threading.Lock()
    _keepers.clear()


def _leave_at_exit() -> None:
    # All threads told first, then waited for together: each may sit out a Redis timeout.
    keepers = list(_keepers.values())
    for keeper in keepers:
        keeper._stopped = True
        keeper._kick.set()
    deadline = time.monotonic() + 3 * REDIS_TIMEOUT
    for keeper in keepers:
        thread = keeper._thread
        if thread is not None:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


on_fork_in_child(_forget_after_fork)
atexit.register(_leave_at_exit)
