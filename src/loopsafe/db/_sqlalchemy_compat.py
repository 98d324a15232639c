"""The private parts of SQLAlchemy loopsafe relies on, in one place, checked against each release.

loopsafe's pools subclass SQLAlchemy's and override its pool hooks ``Pool._do_get``,
``Pool._do_return_conn``, ``Pool._close_connection`` and the ``Pool._invoke_creator`` attribute
(`OVERRIDDEN_POOL_HOOKS`). Beyond those it reads ``QueuePool._max_overflow``, ``QueuePool._overflow``, ``Pool._dialect``
and ``QueuePool._pool`` (the queue of idle records, with ``sqlalchemy.util.queue.Empty``), calls
``_ConnectionRecord._checkin_failed``, runs coroutines from sync code through
``sqlalchemy.util.await_only`` (renamed ``await_`` in 2.1), and loads a URL's asyncio dialect with
``URL.get_dialect(_is_async=True)``. Checked against SQLAlchemy 2.1.9;
tests/db/test_compat.py fails loudly if a release moves any of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import sqlalchemy.util as _sa_util
from sqlalchemy.engine import URL
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.pool.base import ConnectionPoolEntry, _ConnectionRecord
from sqlalchemy.pool.base import _CreatorWRecFnType as CreatorFn
from sqlalchemy.util import concurrency as _sa_concurrency
from sqlalchemy.util import queue as _sa_queue

__all__ = (
    "OVERRIDDEN_POOL_HOOKS",
    "CreatorFn",
    "async_dialect_class",
    "await_in_greenlet",
    "checkin_failed",
    "dialect_of",
    "in_greenlet",
    "max_overflow",
    "take_idle_records",
    "would_wait",
)

#: SQLAlchemy's pool methods (and one attribute) that loopsafe's pool classes override.
OVERRIDDEN_POOL_HOOKS = ("_do_get", "_do_return_conn", "_close_connection", "_invoke_creator")

#: Run a coroutine to completion from sync code inside SQLAlchemy's greenlet. SQLAlchemy 2.1
#: renamed await_only (deprecated from 2.2) to await_; 2.0 has only the old name.
await_in_greenlet: Callable[[Awaitable[Any]], Any] = (
    getattr(_sa_util, "await_", None) or _sa_util.await_only
)

#: Whether sync code runs inside SQLAlchemy's greenlet, where `await_in_greenlet` works.
in_greenlet: Callable[[], bool] = _sa_concurrency.in_greenlet


def async_dialect_class(url: URL) -> type[Dialect]:
    """The dialect class `url` names, in its asyncio flavour (``postgresql+psycopg`` → async)."""
    return url.get_dialect(_is_async=True)


def max_overflow(pool: QueuePool) -> int:
    """The pool's ``max_overflow`` as configured (-1 means unbounded)."""
    return int(pool._max_overflow)


def would_wait(pool: QueuePool, *, ahead: int = 0) -> bool:
    """Whether a checkout now would wait: no idle record left once the `ahead` checkouts already
    under way have taken theirs, and no overflow left to open one."""
    overflow_limit = max_overflow(pool)
    return pool._pool.qsize() <= ahead and 0 <= overflow_limit <= pool._overflow


def dialect_of(pool: Pool) -> Dialect:
    """The dialect the pool pings connections with."""
    return cast(Dialect, pool._dialect)


def checkin_failed(record: ConnectionPoolEntry, error: BaseException) -> None:
    """Give back a record whose checkout failed half-way, as SQLAlchemy does for its own."""
    cast(_ConnectionRecord, record)._checkin_failed(error, _fairy_was_created=False)


def take_idle_records(pool: QueuePool) -> tuple[list[ConnectionPoolEntry], Callable[[], None]]:
    """Take every idle record out of `pool`; returns them and the function that puts them back."""
    queue = pool._pool
    idle: list[ConnectionPoolEntry] = []
    try:
        while True:
            idle.append(queue.get(False))
    except _sa_queue.Empty:
        pass

    def put_back() -> None:
        for record in idle:
            queue.put(record, False)

    return idle, put_back
