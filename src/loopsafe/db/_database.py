"""Database: one AsyncEngine per event loop, sessions with retries, budgets, pool health."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from .. import _fork, _idle, _validate
from .._errors import ConfigurationError, ConfigurationTypeError, DatabaseNotConfiguredError
from .._log import get_logger, redact_dsn
from .._quota import ConnectionQuota
from .._registry import LoopLocal
from ._budget import PoolBudget
from ._plan import ElasticBudget
from ._pool import LoopBoundNullPool, LoopBoundQueuePool, PoolContext, context_of
from ._pooler import (
    Pooler,
    check_isolation_level,
    driver_settings,
    normalize_url,
    refuse_autocommit,
)
from ._pressure import PoolPressure, PressureAlerts
from ._retry import backoff, is_retryable_connect_error, is_retryable_transaction_error
from ._sqlalchemy_compat import max_overflow
from ._status import LedgerStatus, PoolStatus

if TYPE_CHECKING:  # needs redis: imported only for elastic budgets
    from ._lease import LeaseKeeper

__all__ = ("Database", "live_databases")

T = TypeVar("T")

_log = get_logger("loopsafe.db")

_DEFAULT_POOL_TIMEOUT = 30.0
# SQLAlchemy's QueuePool defaults, which also bound a process without a budget.
_DEFAULT_POOL_SIZE = 5
_DEFAULT_MAX_OVERFLOW = 10

_databases: weakref.WeakSet[Database] = weakref.WeakSet()


def live_databases() -> list[Database]:
    """Every `Database` of this process that is still referenced."""
    return list(_databases)


class _Bound:
    """One loop's engine, its session maker and its pool context."""

    __slots__ = ("context", "engine", "maker")

    def __init__(
        self, engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], context: PoolContext
    ) -> None:
        self.engine = engine
        self.maker = maker
        self.context = context


class Database:
    """A database whose engine, pool and sessions belong to the event loop that uses them.

    ``url`` defaults to ``$DATABASE_URL``; a bare ``postgresql://`` or ``postgres://`` URL means
    asyncpg, and any SQLAlchemy asyncio driver URL is used as given. Engines are created lazily,
    one per running loop, and disposed inside that loop when it ends; in a forked child inherited
    engines are dropped without touching the parent's connections.

    ``budget`` caps this process's connections (see `PoolBudget`); ``pooler="transaction"``
    configures the driver for PgBouncer/Supabase transaction pooling; ``poolclass="null"`` opens a
    connection per checkout. ``engine_options`` go to `create_async_engine` (including
    ``connect_args``; the default ``application_name`` is ``loopsafe:<name>``) and
    ``session_options`` to `async_sessionmaker` (default ``expire_on_commit=False``).

    Raises `DatabaseNotConfiguredError` without a URL, and `ConfigurationError` (a `ValueError`;
    `ConfigurationTypeError`, also a `TypeError`, for a wrong type) for invalid options.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        name: str = "default",
        budget: PoolBudget | None = None,
        pooler: Pooler | None = None,
        poolclass: Literal["queue", "null"] = "queue",
        connect_retries: int = 3,
        engine_options: Mapping[str, Any] | None = None,
        session_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Database name must be a non-empty string, got {name!r}")
        if url is None:
            url = os.environ.get("DATABASE_URL") or None
            if url is None:
                raise DatabaseNotConfiguredError(
                    f"Database {name!r} has no URL: pass one (Database('postgresql://user@host/db'))"
                    " or set the DATABASE_URL environment variable."
                )
        if budget is not None and not isinstance(budget, PoolBudget):
            raise ConfigurationTypeError(f"budget must be a loopsafe.db.PoolBudget, got {budget!r}")
        if pooler not in (None, "transaction", "session"):
            raise ConfigurationError(
                f"pooler must be 'transaction', 'session' or None, got {pooler!r}"
            )
        if poolclass not in ("queue", "null"):
            raise ConfigurationError(f"poolclass must be 'queue' or 'null', got {poolclass!r}")
        _validate.count("connect_retries", connect_retries)
        self._engine_options = _check_engine_options(engine_options, budget, poolclass)
        self._session_options = _check_session_options(session_options)
        self._pool_timeout = _validate.seconds(
            "engine_options['pool_timeout']",
            self._engine_options.get("pool_timeout", _DEFAULT_POOL_TIMEOUT),
        )
        if poolclass == "null":
            # NullPool takes no timeout; the budget's quota wait still needs one.
            self._engine_options.pop("pool_timeout", None)
        self._url = normalize_url(url)
        # Validate driver/pooler compatibility now rather than on the first loop that connects.
        driver_settings(
            self._url,
            pooler=pooler,
            application_name="",
            connect_args=self._engine_options.get("connect_args", {}),
        )
        check_isolation_level(self._url, pooler, self._engine_options)
        _require_driver(self._url, name)
        self.name = name
        self.budget = budget
        self.pooler = pooler
        self.poolclass = poolclass
        self.connect_retries = connect_retries
        limit = (
            budget.per_process
            if budget is not None
            else _one_pool(self._engine_options)
            if poolclass == "queue"
            else None
        )
        # Without a budget the process still holds one pool's worth at most, whatever number of
        # loops share it: a thread per request gives each live thread a loop and a pool, and 20
        # threads opened 21 connections where SQLAlchemy's one pool allows 15 (issue #24).
        self._quota = (
            ConnectionQuota(limit, on_pressure=self._relieve_pressure)
            if limit is not None
            else None
        )
        self._elastic = budget if isinstance(budget, ElasticBudget) else None
        self._keeper: tuple[int, LeaseKeeper] | None = None
        if self._elastic is not None:
            _require_redis(name)
        self._shedding: set[asyncio.Task[None]] = set()
        self._pressure = PoolPressure(name, PressureAlerts.from_env())
        self._live: set[_Bound] = set()
        self._live_lock = threading.Lock()
        self._bound: LoopLocal[_Bound] = LoopLocal(
            self._create, aclose=self._dispose, drop=self._drop, name=f"loopsafe.db:{name}"
        )
        _databases.add(self)

    @property
    def url(self) -> URL:
        """The normalised URL (its ``str()`` and ``repr()`` hide the password)."""
        return self._url

    def __repr__(self) -> str:
        return (
            f"<loopsafe.db.Database {self.name!r} "
            f"{self._url.render_as_string(hide_password=True)} loops={len(self._live)}>"
        )

    # -- per-loop resources -------------------------------------------------------------------

    def _create(self) -> _Bound:
        loop = asyncio.get_running_loop()
        options = dict(self._engine_options)
        url, connect_args = driver_settings(
            self._url,
            pooler=self.pooler,
            application_name=f"loopsafe:{self.name}",
            connect_args=options.pop("connect_args", {}),
        )
        if self.poolclass == "queue":
            poolclass: type[LoopBoundQueuePool | LoopBoundNullPool] = LoopBoundQueuePool
            if self.budget is not None:
                options["pool_size"] = self.budget.pool_size
                options["max_overflow"] = self.budget.max_overflow
            if self._elastic is not None and self.pooler == "transaction":
                # A lease per checkout: an idle connection to the pooler holds no server
                # connection, so keep every one warm rather than reconnect under load.
                options["pool_size"] = self._elastic.per_loop
                options["max_overflow"] = 0
            elif self._elastic is not None:
                # A lease per open connection: keep one warm per loop and close the rest on
                # return, so idle connections do not sit on leases other processes wait for.
                options["pool_size"] = 1
                options["max_overflow"] = self._elastic.per_loop - 1
        else:
            poolclass = LoopBoundNullPool
        engine = create_async_engine(url, poolclass=poolclass, connect_args=connect_args, **options)
        refuse_autocommit(engine.sync_engine, url, self.pooler)
        context = PoolContext(
            database=self.name,
            loop=loop,
            budget=self.budget,
            quota=self._quota,
            pool_timeout=self._pool_timeout,
            lease=self._lease_keeper if self._elastic is not None else None,
            lease_per_checkout=self.pooler == "transaction",
        )
        pool = engine.sync_engine.pool
        assert isinstance(pool, (LoopBoundQueuePool, LoopBoundNullPool))
        context.pressure = self._pressure
        pool.loopsafe = context
        maker = async_sessionmaker(engine, **self._session_options)
        bound = _Bound(engine, maker, context)
        context.shed_later = functools.partial(self._shed_soon, bound)
        with self._live_lock:
            self._live.add(bound)
        _log.info(
            "loopsafe.db.engine_created",
            database=self.name,
            url=redact_dsn(self._url),
            loop=context.owner.description,
            pool=self.poolclass,
            budget=repr(self.budget) if self.budget is not None else None,
        )
        return bound

    async def _dispose(self, bound: _Bound) -> None:
        try:
            await bound.engine.dispose()
        finally:
            self._forget(bound)
        _log.debug(
            "loopsafe.db.engine_disposed", database=self.name, loop=bound.context.owner.description
        )

    def _drop(self, bound: _Bound) -> None:
        # No I/O: this runs in a forked child (the sockets are the parent's) or after the loop
        # closed without disposal (nothing can await any more).
        try:
            abandoned = bound.context.abandon_all()
            bound.engine.sync_engine.dispose(close=False)
        finally:
            self._forget(bound)
        _log.info(
            "loopsafe.db.engine_dropped",
            database=self.name,
            loop=bound.context.owner.description,
            connections=abandoned,
            pid=os.getpid(),
        )

    def _forget(self, bound: _Bound) -> None:
        with self._live_lock:
            self._live.discard(bound)

    def _lease_keeper(self) -> LeaseKeeper:
        """This process's keeper of the elastic role's leases (a forked child gets its own)."""
        cached = self._keeper
        generation = _fork.generation()
        if cached is not None and cached[0] == generation:
            return cached[1]
        from ._lease import keeper_for

        assert self._elastic is not None
        keeper = keeper_for(self._elastic)
        # Directly on the server an idle connection holds a lease: give it back when some role
        # waits.
        keeper.use(self, shed_idle=self.pooler != "transaction")
        self._keeper = (generation, keeper)
        return keeper

    # -- keeping a process-wide budget fair between loops ------------------------------------

    def _relieve_pressure(self) -> None:
        """A loop waits for a slot: ask another loop that has idle connections to close one."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        with self._live_lock:
            bounds = list(self._live)
        idle_first: list[tuple[bool, asyncio.AbstractEventLoop, _Bound]] = []
        for bound in bounds:
            loop = bound.context.owner.loop_ref()
            pool = bound.engine.sync_engine.pool
            if loop is None or loop is here or loop.is_closed():
                continue
            if isinstance(pool, LoopBoundQueuePool) and pool.checkedin() > 0:
                idle_first.append((loop.is_running(), loop, bound))
        # A loop nobody runs (a run_async thread between calls, or ended) would run a callback
        # only at its next call: its runner runs the shedding now instead. Those go first, as
        # their connections are the least likely to be wanted back.
        idle_first.sort(key=lambda candidate: candidate[0])
        for _, loop, bound in idle_first:
            taken = _idle.run_while_idle(loop, functools.partial(self._shed, bound))
            if taken:
                return
            if taken is False:  # a run_async call runs it: it sheds itself at its next check-in
                continue
            try:
                loop.call_soon_threadsafe(self._shed_soon, bound)
            except RuntimeError:  # closed meanwhile
                continue
            return

    def _shed_soon(self, bound: _Bound) -> None:
        """On `bound`'s own loop: start closing one of its idle connections."""
        loop = bound.context.owner.loop_ref()
        if loop is None or loop.is_closed():
            return
        task = loop.create_task(self._shed(bound))
        self._shedding.add(task)
        task.add_done_callback(self._shedding.discard)

    async def _shed(self, bound: _Bound) -> None:
        pool = bound.engine.sync_engine.pool
        if not isinstance(pool, LoopBoundQueuePool):
            return
        try:
            await greenlet_spawn(pool.close_one_idle)
        except Exception as error:  # a failed close still released its slot
            _log.debug("loopsafe.db.shed_failed", database=self.name, error=_brief(error))

    def get_engine(self) -> AsyncEngine:
        """This loop's `AsyncEngine`, created on first use.

        Raises `loopsafe.NoRunningLoopError` outside a running loop.

        .. versionadded:: 0.1.0
        """
        return self._bound.get().engine

    def session_maker(self) -> async_sessionmaker[AsyncSession]:
        """This loop's `async_sessionmaker`, bound to this loop's engine.

        .. versionadded:: 0.1.0
        """
        return self._bound.get().maker

    def session(self, *, commit: bool = True) -> AbstractAsyncContextManager[AsyncSession]:
        """A session on this loop's engine: commits on success, rolls back on error, always closes.

        The connection is checked out on entry, retrying failures that may pass (server down or
        restarting, connection refused or reset, backend killed) up to ``connect_retries`` times
        with exponential backoff; bad credentials or a missing database fail at once. With
        ``commit=False`` the transaction is rolled back at the end instead of committed.
        Raises `PoolExhaustedError` when a budgeted pool has nothing free within ``pool_timeout``,
        `WrongLoopError` never (the session is always this loop's).

        .. versionadded:: 0.1.0
        """
        return self._session(commit)

    @contextlib.asynccontextmanager
    async def _session(self, commit: bool) -> AsyncIterator[AsyncSession]:
        session = self.session_maker()()
        try:
            await self._connect(session)
            yield session
        except BaseException:
            await greenlet_spawn(_roll_back_and_close, session.sync_session, self.name)
            raise
        # One trip into SQLAlchemy's greenlet for commit and close, not one each: a trip costs
        # about as much as everything else loopsafe adds to a session.
        if commit:
            await greenlet_spawn(_commit_and_close, session.sync_session, self.name)
        else:
            await session.close()

    async def _connect(self, session: AsyncSession) -> None:
        attempt = 0
        while True:
            try:
                # Not AsyncSession.connection(): it also builds an AsyncConnection proxy that we
                # would throw away, adding about 60% to the cost of this call.
                await greenlet_spawn(session.sync_session.connection)
                return
            except Exception as error:
                attempt += 1
                if attempt > self.connect_retries or not is_retryable_connect_error(error):
                    raise
                delay = backoff(attempt)
                _log.warning(
                    "loopsafe.db.connect_retry",
                    database=self.name,
                    attempt=attempt,
                    retries=self.connect_retries,
                    delay=round(delay, 3),
                    error=_brief(error),
                )
                await session.rollback()
                await asyncio.sleep(delay)

    async def run_in_transaction(
        self, fn: Callable[[AsyncSession], Awaitable[T]], *, retries: int = 3
    ) -> T:
        """Run ``await fn(session)`` in a transaction and commit; re-run it when that can help.

        A serialization failure (SQLSTATE 40001), a deadlock (40P01) or a lost connection
        (invalidated by SQLAlchemy, SQLSTATE class 08, 57P01-57P03), raised by SQLAlchemy or the
        driver, rolls back and runs `fn` again in a fresh transaction, up to `retries` more times
        with backoff; any other error propagates at once, including `fn`'s own `TimeoutError`,
        `OSError` or `ConnectionError`. `fn` must therefore be safe to re-run (no side
        effects outside the transaction). A connection lost *during commit* is ambiguous — the
        commit may have happened — and is retried too, so make such writes idempotent.

        .. versionadded:: 0.1.0
        """
        _validate.count("retries", retries)
        attempt = 0
        while True:
            try:
                async with self.session() as session:
                    return await fn(session)
            except Exception as error:
                if attempt >= retries or not is_retryable_transaction_error(error):
                    raise
                attempt += 1
                delay = backoff(attempt)
                _log.warning(
                    "loopsafe.db.transaction_retry",
                    database=self.name,
                    attempt=attempt,
                    retries=retries,
                    delay=round(delay, 3),
                    error=_brief(error),
                )
                await asyncio.sleep(delay)

    def pool_status(self) -> PoolStatus:
        """Pool figures summed over this process's loops, for health endpoints.

        Keys: ``loops`` (live engines), ``pool_size``, ``max_overflow``, ``checked_out``,
        ``checked_in``, ``overflow`` (connections open beyond pool_size), ``capacity`` (the most
        connections this process may open; with a budget, its per-process share; 0 means
        unbounded, a NullPool without budget). Also ``usage`` (``checked_out / capacity``, 0.0
        when unbounded), ``waiting`` (checkouts waiting for a connection now) and
        ``longest_wait`` (seconds the oldest of them has waited).

        .. versionadded:: 0.1.0
        """
        with self._live_lock:
            bounds = list(self._live)
        status = PoolStatus(
            loops=0,
            pool_size=0,
            max_overflow=0,
            checked_out=0,
            checked_in=0,
            overflow=0,
            capacity=0,
            usage=0.0,
            waiting=0,
            longest_wait=0.0,
        )
        capacity = 0
        for bound in bounds:
            pool = bound.engine.sync_engine.pool
            status["loops"] += 1
            context = context_of(pool)
            # Connections that exist, from loopsafe's own accounting: SQLAlchemy's counters
            # include checkouts still waiting for a budget slot and emptied idle records.
            held = context.held() if context is not None else 0
            opened = context.open_count() if context is not None else 0
            status["checked_out"] += held
            if isinstance(pool, QueuePool):
                size = pool.size()
                overflow_limit = max(0, max_overflow(pool))
                status["pool_size"] += size
                status["max_overflow"] += overflow_limit
                status["checked_in"] += max(0, opened - held)
                status["overflow"] += max(0, opened - size)
                capacity += size + overflow_limit
        if self.budget is not None:
            per_process = self.budget.per_process
            # Before the first loop (or after the last one ended) the budget is still the
            # process's share: a health check must not read 0, which means "unbounded".
            capacity = (
                per_process
                if self.poolclass == "null" or not bounds
                else min(capacity, per_process)
            )
        waiting, longest_wait = self._pressure.waiting()
        status["capacity"] = capacity
        status["usage"] = round(status["checked_out"] / capacity, 4) if capacity else 0.0
        status["waiting"] = waiting
        status["longest_wait"] = round(longest_wait, 4)
        if self._elastic is not None:
            status["ledger"] = cast(LedgerStatus, self._lease_keeper().status())
        return status

    async def aclose(self) -> None:
        """Dispose of this loop's engine (closing its pooled connections); the next use makes a
        new one. Other loops' engines are closed when their loops end.

        .. versionadded:: 0.1.0
        """
        await self._bound.aclose()


def _commit_and_close(session: Session, database: str) -> None:
    try:
        session.commit()
    except BaseException:
        _roll_back_and_close(session, database)
        raise
    session.close()


def _roll_back_and_close(session: Session, database: str) -> None:
    try:
        session.rollback()
    except Exception as error:  # the connection may be gone; the first error matters
        _log.debug("loopsafe.db.rollback_failed", database=database, error=_brief(error))
    finally:
        session.close()


def _brief(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return redact_dsn(f"{type(error).__name__}: {text}")


def _require_driver(url: URL, database: str) -> None:
    """Fail now, naming what to install, if the URL's driver is missing (not at the first connect)."""
    driver = url.get_driver_name()
    module = "psycopg" if driver.startswith("psycopg") else driver
    try:
        importlib.import_module(module)
    except ImportError as exc:
        fix = "pip install 'loopsafe[db]'" if driver == "asyncpg" else f"pip install {module}"
        raise ImportError(
            f"loopsafe.db Database {database!r} uses the {driver} driver, which is not "
            f"installed: {fix}"
        ) from exc


def _require_redis(database: str) -> None:
    try:
        importlib.import_module("redis")
    except ImportError as exc:
        raise ImportError(
            f"loopsafe.db Database {database!r} has an elastic budget, whose ledger lives in "
            "Redis: pip install 'loopsafe[db,redis]'"
        ) from exc


def _one_pool(options: Mapping[str, Any]) -> int | None:
    """``pool_size + max_overflow`` of `options` (SQLAlchemy's defaults 5 and 10); None where the
    pool itself is unbounded (``pool_size=0`` or ``max_overflow=-1``)."""
    size = options.get("pool_size", _DEFAULT_POOL_SIZE)
    overflow = options.get("max_overflow", _DEFAULT_MAX_OVERFLOW)
    for key, value in (("pool_size", size), ("max_overflow", overflow)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationTypeError(
                f"engine_options[{key!r}] must be a whole number, got {value!r}"
            )
    if size <= 0 or overflow < 0:
        return None
    return int(size + overflow)


def _check_engine_options(
    options: Mapping[str, Any] | None, budget: PoolBudget | None, poolclass: str
) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationTypeError(
            f"engine_options must be a mapping, got {type(options).__name__}"
        )
    checked = dict(options)
    for key in ("poolclass", "pool", "creator", "async_creator"):
        if key in checked:
            raise ConfigurationError(
                f"engine_options[{key!r}] is not supported: loopsafe creates one pool per loop "
                "itself; choose Database(poolclass='queue' or 'null')."
            )
    for key in ("pool_size", "max_overflow"):
        if key in checked and budget is not None:
            raise ConfigurationError(
                f"engine_options[{key!r}] conflicts with budget={budget!r}, which sets pool_size="
                f"{budget.pool_size} and max_overflow={budget.max_overflow}; pass one or the other."
            )
        if key in checked and poolclass == "null":
            raise ConfigurationError(
                f"engine_options[{key!r}] has no meaning with poolclass='null' (no pooling); "
                "drop it or use poolclass='queue'."
            )
    connect_args = checked.get("connect_args", {})
    if not isinstance(connect_args, Mapping):
        raise ConfigurationTypeError(
            f"engine_options['connect_args'] must be a mapping, got {type(connect_args).__name__}"
        )
    return checked


def _check_session_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigurationTypeError(
            f"session_options must be a mapping, got {type(options).__name__}"
        )
    if "bind" in options or "binds" in options:
        raise ConfigurationError(
            "session_options cannot bind sessions: each loop's sessions are bound to that loop's "
            "engine by loopsafe."
        )
    checked = {"expire_on_commit": False}
    checked.update(options)
    return checked
