"""Connection pools bound to one event loop: loop checks, budget caps, tracking, checkout health."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool
from sqlalchemy.pool.base import ConnectionPoolEntry

from .._errors import BoundExceededError, PoolExhaustedError
from .._log import get_logger
from .._owner import LoopOwner
from .._quota import ConnectionQuota
from ._abandon import abandon_connection
from ._asyncpg_compat import transport_of
from ._budget import PoolBudget
from ._pressure import PoolPressure
from ._sqlalchemy_compat import (
    CreatorFn,
    await_in_greenlet,
    checkin_failed,
    dialect_of,
    in_greenlet,
    max_overflow,
    take_idle_records,
    would_wait,
)

if TYPE_CHECKING:  # the lease machinery needs redis, imported only for elastic budgets
    from ._lease import LeaseKeeper

__all__ = ("LoopBoundNullPool", "LoopBoundQueuePool", "PoolContext", "context_of")

#: A pooled connection idle for longer than this is pinged at checkout. Connections used within
#: the window skip the round trip, as HikariCP's aliveBypassWindowMs does (500 ms there too), and
#: pay only a non-blocking poll() of their socket, which catches servers that closed them.
PING_AFTER_IDLE = 0.5
_CHECKED_IN_AT = "loopsafe_checked_in_at"
_log = get_logger("loopsafe.db")
_CHECKED_OUT_AT = "loopsafe_checked_out_at"


class PoolContext:
    """What one loop's pool knows about its `Database`; shared by the pools an engine recreates."""

    #: Where checkout waits and long holds are reported (set by the `Database`).
    pressure: PoolPressure | None = None

    def __init__(
        self,
        *,
        database: str,
        loop: asyncio.AbstractEventLoop,
        budget: PoolBudget | None,
        quota: ConnectionQuota | None,
        pool_timeout: float,
        lease: Callable[[], LeaseKeeper] | None = None,
        lease_per_checkout: bool = False,
    ) -> None:
        self.database = database
        self.owner = LoopOwner(
            loop,
            what=f"The engine of loopsafe Database {database!r}",
            fix=(
                "An engine, session or session maker belongs to the loop it was obtained on; do "
                "not keep one in a global or pass it to another loop or thread. Call "
                "`db.session()` / `db.get_engine()` (or loopsafe.db.session()) inside the "
                "coroutine that uses it, so each loop gets its own."
            ),
        )
        self.budget = budget
        self.quota = quota
        self.pool_timeout = pool_timeout
        self.pid = os.getpid()
        # Every driver connection this loop's engine opened and has not closed yet, keyed by id:
        # the entries are strong references, so an id cannot be reused while it is listed.
        self.connections: dict[int, Any] = {}
        # Records a queue pool handed out and not yet got back. SQLAlchemy's checkedout() counts
        # a checkout before its connection exists, so a checkout waiting for a budget slot (or
        # reconnecting an emptied record) looked like a held connection (issue #20: 4 reported
        # "checked out" while the server saw 2). Only a record with a connection is held.
        self.out: set[ConnectionPoolEntry] = set()
        # Closes one idle connection soon, on this loop (set by the `Database`).
        self.shed_later: Callable[[], None] | None = None
        # Checkouts between their wait prediction and their record (one loop: no lock needed).
        self.getting = 0
        self.checked_out = 0
        self._lock = threading.Lock()
        # Elastic roles: where this process's leases come from, and whether a lease lasts a
        # checkout (transaction pooler) or as long as the connection is open.
        self.lease = lease
        self.lease_per_checkout = lease is not None and lease_per_checkout
        self.tickets: dict[Any, str] = {}  # connection id or checked-out record → its lease
        self._leasing: set[Any] = set()  # tasks inside a leased checkout (QueuePool recurses)

    def held(self) -> int:
        """Connections that exist and are checked out right now."""
        if self.out:
            return sum(1 for record in list(self.out) if record.dbapi_connection is not None)
        return self.checked_out

    def open_count(self) -> int:
        """Connections this loop's engine opened and has not closed."""
        return len(self.connections)

    def opened(self, connection: Any, ticket: str | None = None) -> None:
        with self._lock:
            self.connections[id(connection)] = connection
            if ticket is not None:
                self.tickets[id(connection)] = ticket

    def closed(self, connection: Any) -> None:
        with self._lock:
            known = self.connections.pop(id(connection), None) is not None
            ticket = self.tickets.pop(id(connection), None)
        if known and self.quota is not None:
            self.quota.release()
        if ticket is not None:
            self.give_back(ticket)

    def abandon_all(self) -> int:
        """Release every open connection without I/O (see `abandon_connection`); returns how many."""
        with self._lock:
            connections = list(self.connections.values())
            self.connections.clear()
            tickets = list(self.tickets.values())
            self.tickets.clear()
        mine = self.pid == os.getpid()  # a forked child's tickets are the parent's
        for connection in connections:
            abandon_connection(connection, owner_pid=self.pid)
            if self.quota is not None and mine:
                self.quota.release()
        if mine:
            for ticket in tickets:
                self.give_back(ticket)
        return len(connections)

    def take_lease(self) -> str:
        """Wait for a lease of the elastic role (inside SQLAlchemy's greenlet); its ticket.

        Raises `PoolExhaustedError` naming the plan and role after `pool_timeout`.
        """
        from ._lease import LeaseTimeout

        assert self.lease is not None
        keeper = self.lease()
        try:
            ticket: str = await_in_greenlet(keeper.acquire(self.pool_timeout, self.pressure))
        except LeaseTimeout:
            raise self.exhausted(
                "the elastic ledger had no connection free for this role"
            ) from None
        return ticket

    def give_back(self, ticket: str) -> None:
        if self.lease is not None and self.pid == os.getpid():
            self.lease().release(ticket)

    def leased(self, get: Callable[[], ConnectionPoolEntry]) -> ConnectionPoolEntry:
        """Check out a record with `get` under a lease of its own (transaction pooler)."""
        # The checkout's task: SQLAlchemy's greenlet runs inside it, so a recursive call sees it.
        me = asyncio.current_task() or threading.get_ident()
        if me in self._leasing:  # QueuePool._do_get calling itself: the lease is taken already
            return get()
        ticket = self.take_lease()
        self._leasing.add(me)
        try:
            record = get()
        except BaseException:
            self.give_back(ticket)
            raise
        finally:
            self._leasing.discard(me)
        with self._lock:
            self.tickets[record] = ticket
        return record

    def checked_in(self, record: ConnectionPoolEntry) -> None:
        """A leased checkout ended: its lease goes back."""
        with self._lock:
            ticket = self.tickets.pop(record, None)
        if ticket is not None:
            self.give_back(ticket)

    def exhausted(self, cause: str) -> PoolExhaustedError:
        """The error for a checkout that waited `pool_timeout` in vain, naming the budget."""
        if self.lease is not None:
            keeper = self.lease()
            figures = keeper.status()
            share = (
                f"the elastic role {keeper.role!r} of BudgetPlan {keeper.plan!r} shares "
                f"{keeper.limit} connections with every process of the plan's elastic roles "
                f"(headroom {keeper.headroom} kept for higher roles; {figures['mode']} mode; "
                f"in use by role {figures['in_use']}, waiting {figures['waiting']}; this "
                f"process holds {figures['held']})"
            )
        elif self.budget is not None:
            budget = self.budget
            share = (
                f"{budget!r} gives this process {budget.per_process} connections "
                f"({budget.loops_per_process} loop(s) × pool_size={budget.pool_size} + "
                f"max_overflow={budget.max_overflow})"
            )
        else:
            share = "the pool has no PoolBudget; its own pool_size + max_overflow is the limit"
            if self.quota is not None:
                share += (
                    f", and all loops of this process together hold {self.quota.limit} at most "
                    "(one pool's size); a PoolBudget sizes one pool per loop instead"
                )
        return PoolExhaustedError(
            f"No connection became free within pool_timeout={self.pool_timeout:g} s for loopsafe "
            f"Database {self.database!r} on {self.owner.description} ({cause}): {share}. "
            "Waiting beat exceeding the budget. Hold sessions for shorter times, bound the "
            "concurrency that opens them, raise pool_timeout, or raise max_connections / lower "
            "processes if the server allows it."
        )


def context_of(pool: Pool) -> PoolContext | None:
    """The `PoolContext` of a loopsafe pool (None for any other pool)."""
    context: PoolContext | None = getattr(pool, "loopsafe", None)
    return context


def _driver_closed(driver: Any) -> bool:
    transport = transport_of(driver)
    if transport is not None and transport.is_closing():
        # uvloop may have read the server's goodbye and EOF but not yet told asyncpg (its
        # connection_lost is still queued): the protocol is already unusable.
        return True
    is_closed = getattr(driver, "is_closed", None)
    if callable(is_closed):  # asyncpg notices a server-side close while the connection idles
        return bool(is_closed())
    return getattr(driver, "closed", False) is True


def _socket_fd(driver: Any) -> int | None:
    transport = transport_of(driver)  # asyncpg
    if transport is not None:
        sock = transport.get_extra_info("socket")
        return int(sock.fileno()) if sock is not None else None
    pgconn = getattr(driver, "pgconn", None)  # psycopg
    if pgconn is not None:
        try:
            return int(pgconn.socket)
        except Exception:  # a closed libpq connection has no socket
            return None
    return None


def _has_pending_input(driver: Any) -> bool:
    """True if the idle connection's socket has bytes or EOF waiting: one non-blocking syscall.

    An idle connection has nothing to say, so input means the server closed it (a restart,
    pg_terminate_backend) or sent a notice, and the loop has not processed that yet (it may not
    have run since). Either way a ping settles it. A poll object per call, not a shared one:
    it costs less than the syscall, and needs no lock (select() would fail on fds >= 1024).
    """
    fd = _socket_fd(driver)
    if fd is None or fd < 0:
        return False
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


def _wrap_creator(pool: Pool, create: CreatorFn) -> CreatorFn:
    def create_within_budget(rec: ConnectionPoolEntry) -> DBAPIConnection:
        context = context_of(pool)
        if context is None:
            return create(rec)
        quota = context.quota
        if quota is not None:
            pressure = context.pressure
            full = quota.used >= quota.limit
            wait = pressure.wait_started() if pressure is not None and full else None
            try:
                await_in_greenlet(quota.acquire(context.pool_timeout))
            except BoundExceededError:
                raise context.exhausted(
                    f"all {quota.limit} connections of this process are in use by its loops"
                ) from None
            finally:
                if pressure is not None and wait is not None:
                    pressure.wait_ended(wait)
        ticket = None
        try:
            if context.lease is not None and not context.lease_per_checkout:
                ticket = context.take_lease()  # directly on the server: a lease while open
            connection = create(rec)
        except BaseException:
            if quota is not None:
                quota.release()
            if ticket is not None:
                context.give_back(ticket)
            raise
        context.opened(connection, ticket)
        return connection

    return create_within_budget


_P = TypeVar("_P", bound="_LoopBound")


class _LoopBound(Pool):
    """What both pool classes add: the loop/budget context, kept across `recreate`, and
    connection-close accounting."""

    loopsafe: PoolContext | None = None

    def __init__(self, creator: Any, **kw: Any) -> None:
        super().__init__(creator, **kw)
        self._invoke_creator = _wrap_creator(self, self._invoke_creator)

    def recreate(self: _P) -> _P:
        pool = super().recreate()
        assert isinstance(pool, type(self))
        pool.loopsafe = self.loopsafe
        return pool

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        try:
            super()._close_connection(connection, terminate=terminate)
        finally:
            if self.loopsafe is not None:
                self.loopsafe.closed(connection)


class LoopBoundQueuePool(_LoopBound, AsyncAdaptedQueuePool):
    """`AsyncAdaptedQueuePool` that refuses other loops and counts against a process budget."""

    # SQLAlchemy names a pool's logger after its class's module: ours would log "Pool disposed"
    # and "Pool recreating" at INFO under `loopsafe.db._pool…`, where an application that shows
    # loopsafe's INFO events saw them at every loop end. Under SQLAlchemy's own name they follow
    # `echo_pool` and the `sqlalchemy.pool` logger, as for any SQLAlchemy pool.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    def _do_get(self) -> ConnectionPoolEntry:
        context = self.loopsafe
        if context is None:
            return super()._do_get()
        # Before touching the queue: a wait on another loop's asyncio primitives would raise
        # "attached to a different loop" or hang.
        context.owner.check()
        if context.lease_per_checkout:
            return context.leased(self._get_record)
        return self._get_record()

    def _get_record(self) -> ConnectionPoolEntry:
        context = self.loopsafe
        assert context is not None
        pressure = context.pressure
        wait = None
        if pressure is not None:
            # Checkouts of this loop still taking their record count against the idle ones:
            # SQLAlchemy < 2.1 yields to the loop inside the queue's get before it removes the
            # record, so a second checkout saw one idle record and did not count as waiting.
            if would_wait(self, ahead=context.getting):
                wait = pressure.wait_started()
            else:
                pressure.immediate += 1
        context.getting += 1
        try:
            record = super()._do_get()
        except exc.TimeoutError:
            raise context.exhausted(
                f"all {self.size()} + {max_overflow(self)} connections of this loop's pool are "
                "checked out"
            ) from None
        finally:
            context.getting -= 1
            if pressure is not None and wait is not None:
                pressure.wait_ended(wait)
        context.out.add(record)
        if pressure is not None:
            record.info[_CHECKED_OUT_AT] = time.monotonic()
            pressure.observe_usage(context.held(), self.size() + max_overflow(self))
        try:
            self._invalidate_if_dead(record)
        except BaseException as error:  # a cancelled ping: nothing else would return the record
            checkin_failed(record, error)
            raise
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        now = record.info[_CHECKED_IN_AT] = time.monotonic()
        checked_out_at = record.info.pop(_CHECKED_OUT_AT, None)
        context = self.loopsafe
        if context is not None:
            context.out.discard(record)
            if checked_out_at is not None and context.pressure is not None:
                context.pressure.observe_hold(now - checked_out_at)
        try:
            super()._do_return_conn(record)
        finally:
            if context is not None and context.lease_per_checkout:
                context.checked_in(record)
        if context is not None and context.quota is not None and context.quota.waiting:
            self._shed_for_waiter(context)

    def _shed_for_waiter(self, context: PoolContext) -> None:
        # Another loop waits for a slot: give up an idle connection rather than keep a share
        # this loop is not using. Here and now when the check-in runs in SQLAlchemy's greenlet
        # (a session's close): a task left closing it could outlive a run_async call and be
        # resumed by another thread, which a greenlet cannot be. Outside one (garbage
        # collection) the driver cannot be awaited: scheduled instead.
        if not in_greenlet():
            if context.shed_later is not None:
                context.shed_later()
            return
        try:
            self.close_one_idle()
        except Exception as error:  # a failed close still released its slot
            _log.debug("loopsafe.db.shed_failed", database=context.database, error=repr(error))

    def _invalidate_if_dead(self, record: ConnectionPoolEntry) -> None:
        """Invalidate a connection the server closed while it sat idle in the pool.

        SQLAlchemy's checkout then opens a new one on the same record, as it does for a
        `DisconnectionError` raised by a checkout listener. Done here rather than in such a
        listener because pool event dispatch alone costs about as much as this whole check.
        """
        connection = record.dbapi_connection
        if connection is None:
            return  # invalidated or closed while idle: the checkout reconnects
        driver = record.driver_connection
        if _driver_closed(driver):
            record.invalidate(
                exc.DisconnectionError("connection closed by the server while idle in the pool")
            )
            return
        # Popped, so a second look at this record within one checkout (QueuePool._do_get may
        # call itself) does not ping again.
        checked_in_at = record.info.pop(_CHECKED_IN_AT, None)
        if checked_in_at is None:
            return  # fresh from connect()
        idle = time.monotonic() - checked_in_at
        if idle > PING_AFTER_IDLE or _has_pending_input(driver):
            try:
                dialect_of(self).do_ping(connection)
            except Exception as error:
                record.invalidate(error)

    def close_one_idle(self) -> bool:
        """Close the connection of one checked-in record, freeing its budget slot.

        The record itself goes back into the queue, empty, exactly like an invalidated one: a
        checkout that waits on this pool's queue still gets it, and reconnects (taking a slot
        again) only when it is used. Returns False if no idle record holds a connection.
        Must run in a greenlet on this pool's loop (the close may await the driver).
        """
        idle, put_back = take_idle_records(self)
        victim = next((record for record in idle if record.dbapi_connection is not None), None)
        try:
            if victim is not None:
                victim.close()
        finally:
            put_back()
        return victim is not None


class LoopBoundNullPool(_LoopBound, NullPool):
    """`NullPool` (a new connection per checkout) with the same loop check and budget cap."""

    _sqla_logger_namespace = "sqlalchemy.pool.impl.NullPool"  # see LoopBoundQueuePool

    def _do_get(self) -> ConnectionPoolEntry:
        context = self.loopsafe
        if context is not None:
            context.owner.check()
        if context is not None and context.lease_per_checkout:
            record = context.leased(super()._do_get)
        else:
            record = super()._do_get()
        if context is not None:
            context.checked_out += 1
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        if self.loopsafe is not None:
            self.loopsafe.checked_out -= 1
        try:
            super()._do_return_conn(record)
        finally:
            if self.loopsafe is not None and self.loopsafe.lease_per_checkout:
                self.loopsafe.checked_in(record)
