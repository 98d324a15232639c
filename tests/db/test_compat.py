"""The private SQLAlchemy and asyncpg names loopsafe touches still exist, with the shapes it uses.

Fails loudly when a release moves one: update loopsafe/db/_sqlalchemy_compat.py or
_asyncpg_compat.py then, and the versions they name.
"""

from __future__ import annotations

import inspect
from typing import NoReturn

import asyncpg
import sqlalchemy
import sqlalchemy.util
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool, QueuePool
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.util import queue

from loopsafe.db._sqlalchemy_compat import (
    OVERRIDDEN_POOL_HOOKS,
    async_dialect_class,
    await_in_greenlet,
    take_idle_records,
    would_wait,
)

SA = f"SQLAlchemy {sqlalchemy.__version__}"


def _creator() -> NoReturn:
    raise AssertionError("never connects")


def test_sqlalchemy_pool_hooks_loopsafe_overrides_still_exist() -> None:
    for pool_class in (AsyncAdaptedQueuePool, NullPool):
        pool = pool_class(_creator)
        for hook in OVERRIDDEN_POOL_HOOKS:
            assert hasattr(pool, hook), f"{SA} moved {pool_class.__name__}.{hook}"
    signature = inspect.signature(Pool._close_connection)
    assert "terminate" in signature.parameters, f"{SA} changed Pool._close_connection"


def test_sqlalchemy_private_reads_still_exist() -> None:
    pool = AsyncAdaptedQueuePool(_creator, pool_size=2, max_overflow=3)
    assert isinstance(pool, QueuePool)
    assert pool._max_overflow == 3, f"{SA} moved QueuePool._max_overflow"
    assert hasattr(pool, "_dialect"), f"{SA} moved Pool._dialect"
    assert pool._overflow == -2, f"{SA} moved QueuePool._overflow"  # starts at -pool_size
    assert not would_wait(pool)  # also reads QueuePool._pool.empty()
    idle, put_back = take_idle_records(pool)  # reads QueuePool._pool and queue.Empty
    assert idle == []
    put_back()
    assert issubclass(queue.Empty, Exception), f"{SA} moved sqlalchemy.util.queue.Empty"
    checkin_failed = inspect.signature(_ConnectionRecord._checkin_failed)
    assert "_fairy_was_created" in checkin_failed.parameters, (
        f"{SA} changed _ConnectionRecord._checkin_failed"
    )
    assert await_in_greenlet in (
        getattr(sqlalchemy.util, "await_", None),
        getattr(sqlalchemy.util, "await_only", None),
    ), f"{SA} moved await_only/await_"


def test_sqlalchemy_still_loads_asyncio_dialects_by_url() -> None:
    url = sqlalchemy.make_url("postgresql+psycopg://u@h/db")
    assert async_dialect_class(url).is_async, f"{SA} changed URL.get_dialect(_is_async=True)"


def test_asyncpg_connection_keeps_its_transport_and_aborted_flag() -> None:
    source = inspect.getsource(asyncpg.connection.Connection)
    where = f"asyncpg {asyncpg.__version__} moved Connection"
    assert "self._transport" in source, f"{where}._transport"
    assert "self._aborted" in source, f"{where}._aborted"
    assert "_aborted" in inspect.getsource(asyncpg.connection.Connection.is_closed), (
        f"{where}.is_closed(), which no longer reads _aborted"
    )
