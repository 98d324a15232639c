"""Let go of an HTTP or SDK client's sockets without I/O, for forked children and dead loops."""

from __future__ import annotations

from .._release import release_transport
from ._httpx_compat import pooled_transports

__all__ = ("release_without_io",)


def release_without_io(client: object) -> int:
    """Detach every pooled socket of `client` without sending a byte; returns how many.

    `client` is an ``httpx``/``httpx2`` ``AsyncClient`` or an SDK client holding one.
    """
    transports = pooled_transports(client)
    for transport, stream in transports:
        release_transport(transport, stream, client)
    return len(transports)
