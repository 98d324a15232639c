"""Let go of an HTTP or SDK client's sockets without I/O, for forked children and dead loops."""

from __future__ import annotations

import threading
from typing import Any

from ..redis._release import _blank_descriptor as blank_descriptor

__all__ = ("release_without_io",)

# Clients released here, kept reachable on purpose: collecting one would let the SDK's finalizer
# schedule its aclose() on whatever loop runs, and transports' finalizers unregister descriptors
# from an epoll set a forked child shares with its parent (see loopsafe.redis._release).
_retained: list[object] = []
_retained_lock = threading.Lock()


def release_without_io(client: object) -> int:
    """Detach every pooled socket of `client` without sending a byte; returns how many.

    `client` is an `httpx`/`httpx2` ``AsyncClient`` or an SDK client holding one (``_client``).
    Each descriptor is pointed at ``/dev/null``: in a forked child that drops only the child's
    reference, in the owning process it closes the connection at the OS level.
    """
    http: Any = getattr(client, "_client", client)
    transport: Any = getattr(http, "_transport", None)
    while hasattr(transport, "inner"):  # our LimitedTransport around the real one
        transport = transport.inner
    released = 0
    for connection in getattr(getattr(transport, "_pool", None), "_connections", ()):
        stream = getattr(getattr(connection, "_connection", None), "_network_stream", None)
        if stream is not None:
            blank_descriptor(stream)
            released += 1
    with _retained_lock:
        _retained.append(client)
    return released
