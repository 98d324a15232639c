"""The private parts of redis-py loopsafe relies on, in one place, checked against each release.

Private names used: ``ConnectionPool._available_connections`` and ``_in_use_connections`` (every
connection of a pool), ``AbstractConnection._reader`` / ``_writer`` (its streams, which its
finalizer checks) and ``AbstractConnection._close()`` (drop the socket without awaiting). Checked
against redis-py 8.1.0; tests/redis/test_compat.py fails loudly if a release
moves any of them.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

__all__ = ("client_connections", "close_socket_now", "detach_streams")


def client_connections(client: Redis) -> list[AbstractConnection]:
    """Every connection `client` holds: idle and in use in its pool, and its single connection."""
    pool: ConnectionPool = client.connection_pool
    connections: list[AbstractConnection] = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    single = getattr(client, "connection", None)
    if single is not None:
        connections.append(single)
    return connections


def detach_streams(connection: AbstractConnection) -> tuple[Any, Any]:
    """Take `connection`'s (reader, writer) away from it; (None, None) if it is not connected.

    Without its writer the connection's finalizer neither warns nor closes through the transport.
    """
    reader: Any = getattr(connection, "_reader", None)
    writer: Any = getattr(connection, "_writer", None)
    if writer is not None:
        connection._reader = None
        connection._writer = None
    return reader, writer


def close_socket_now(connection: AbstractConnection) -> None:
    """Close `connection`'s socket without awaiting anything (no goodbye to the server)."""
    connection._close()  # type: ignore[no-untyped-call]
