"""Let go of a Redis client's sockets without I/O, for forked children and loops closed too early."""

from __future__ import annotations

from redis.asyncio import Redis

from .._release import release_transport
from ._redis_compat import client_connections, detach_streams

__all__ = ("release_without_io",)


def release_without_io(client: Redis) -> int:
    """Detach every socket of `client` without sending a byte (no QUIT); returns how many."""
    released = 0
    for connection in client_connections(client):
        reader, writer = detach_streams(connection)
        if writer is not None:
            release_transport(writer.transport, reader, writer)
            released += 1
    return released
