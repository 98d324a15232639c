"""The private parts of httpx, httpcore and anyio loopsafe relies on, in one place, checked.

Private names used, from an SDK client down to the asyncio transport of each pooled connection:
the SDKs' ``_client`` (their httpx client), ``AsyncClient._transport``, ``AsyncHTTPTransport._pool``,
``AsyncConnectionPool._connections``, ``AsyncHTTPConnection._connection``, the HTTP/1.1 and HTTP/2
connections' ``_network_stream``, httpcore's ``AnyIOStream._stream`` and anyio's asyncio
``SocketStream._transport`` (under ``TLSStream.transport_stream`` for https). The same for httpx
0.28.1 / httpcore 1.0.9 and httpx2 / httpcore2 2.16.2 with anyio 4.16.0;
tests/llm/test_compat.py fails loudly if a release moves any of them.
"""

from __future__ import annotations

from typing import Any

__all__ = ("pooled_transports",)


def pooled_transports(client: object) -> list[tuple[Any, Any]]:
    """(asyncio transport, the network stream around it) of every pooled connection of `client`.

    `client` is an ``httpx``/``httpx2`` ``AsyncClient`` or an SDK client holding one.
    """
    http: Any = getattr(client, "_client", client)
    transport: Any = getattr(http, "_transport", None)
    while hasattr(transport, "inner"):  # loopsafe's LoopTransport around the real one
        transport = transport.inner
    found = []
    for connection in getattr(getattr(transport, "_pool", None), "_connections", ()):
        stream = getattr(getattr(connection, "_connection", None), "_network_stream", None)
        anyio_stream = getattr(stream, "_stream", None)
        anyio_stream = getattr(anyio_stream, "transport_stream", anyio_stream)  # under TLS
        asyncio_transport = getattr(anyio_stream, "_transport", None)
        if asyncio_transport is not None:
            found.append((asyncio_transport, stream))
    return found
