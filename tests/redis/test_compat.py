"""The private redis-py names loopsafe touches still exist: fails loudly when a release moves one.

Update loopsafe/redis/_redis_compat.py, and the versions it names, when this fails.
"""

from __future__ import annotations

import redis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection

from loopsafe.redis._redis_compat import client_connections, detach_streams

WHERE = f"redis-py {redis.__version__} moved"


def test_pool_still_lists_its_connections_in_two_collections() -> None:
    pool = ConnectionPool()
    assert hasattr(pool, "_available_connections"), f"{WHERE} ConnectionPool._available_connections"
    assert hasattr(pool, "_in_use_connections"), f"{WHERE} ConnectionPool._in_use_connections"
    assert client_connections(Redis.from_pool(pool)) == []


def test_connection_still_keeps_its_streams_and_a_sync_close() -> None:
    connection = Connection()
    assert connection._reader is None, f"{WHERE} AbstractConnection._reader"
    assert connection._writer is None, f"{WHERE} AbstractConnection._writer"
    assert callable(getattr(AbstractConnection, "_close", None)), (
        f"{WHERE} AbstractConnection._close"
    )
    assert detach_streams(connection) == (None, None)
