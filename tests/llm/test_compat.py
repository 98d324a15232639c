"""The private httpx/httpcore/anyio names loopsafe touches still exist: fails loudly when a
release moves one. Update loopsafe/llm/_httpx_compat.py, and the versions it names, when this fails.
"""

from __future__ import annotations

import asyncio

import httpcore
import httpcore2
import httpx
import httpx2

from loopsafe.http import get_http
from loopsafe.llm import Limit, configure, get_openai
from loopsafe.llm._httpx_compat import pooled_transports

WHERE = (
    f"httpx {httpx.__version__} / httpcore {httpcore.__version__} / "
    f"httpx2 {httpx2.__version__} / httpcore2 {httpcore2.__version__} moved"
)


async def test_every_pooled_connection_of_both_http_libraries_is_found(llm_server_url: str) -> None:
    configure(
        openai_api_key="k",
        openai_base_url=llm_server_url,
        limits={"openai": Limit(concurrency=100)},  # found through loopsafe's transport too
        namespace="loopsafe-test:compat",
    )
    await get_http().get(f"{llm_server_url}/models")
    await get_openai().models.list()
    for client in (get_http(), get_openai()):
        transports = pooled_transports(client)
        assert len(transports) == 1, f"{WHERE}: no pooled connection found in {client!r}"
        transport, _ = transports[0]
        assert isinstance(transport, asyncio.Transport), WHERE
        assert not transport.is_closing()
