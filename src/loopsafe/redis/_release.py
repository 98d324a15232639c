"""Let go of a Redis client's sockets without I/O, for forked children and loops closed too early."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from redis.asyncio import Redis

__all__ = ("release_without_io",)

# Objects whose sockets were released here. They are kept reachable on purpose: collecting them
# would run StreamWriter.__del__ / transport.__del__, which in a forked child call into the
# *parent's* loop (its epoll instance is shared after fork, so unregistering a descriptor there
# unregisters it for the parent too) and elsewhere warn "unclosed transport" / "loop is closed".
# The list grows only when a loop ends without disposal or a process forks with live clients.
_retained: list[object] = []
_retained_lock = threading.Lock()


def release_without_io(client: Redis) -> int:
    """Detach every socket of `client`'s pool without sending a byte; returns how many.

    Each descriptor is pointed at ``/dev/null`` with ``dup2``: in a forked child that drops only the
    child's reference (the parent's connection, and its registration in the shared epoll set, stay
    intact); in the owning process it closes the connection at the OS level, so the server sees the
    client go. Nothing ever writes on the socket (no QUIT), and the descriptor number stays taken
    until the retained objects die, so a later close cannot hit an unrelated file.
    """
    pool: Any = client.connection_pool
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    single = getattr(client, "connection", None)
    if single is not None:
        connections.append(single)
    released = 0
    for connection in connections:
        writer = getattr(connection, "_writer", None)
        reader = getattr(connection, "_reader", None)
        if writer is None:
            continue
        _blank_descriptor(writer)
        with _retained_lock:
            _retained.append((reader, writer))
        # With _writer gone, Connection.__del__ neither warns nor closes through the transport.
        connection._reader = None
        connection._writer = None
        released += 1
    return released


def _blank_descriptor(writer: Any) -> None:
    sock = writer.get_extra_info("socket")
    fileno = sock.fileno() if sock is not None else -1
    if fileno < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        with contextlib.suppress(OSError):
            os.dup2(devnull, fileno)
    finally:
        os.close(devnull)
