"""A forked child drops the inherited Redis client without a byte sent; the parent keeps its own."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import pytest

from loopsafe import aclose_all
from loopsafe.redis import get_redis, publish

from ..conftest import LoopFactory, run_on_new_loop
from ..forking import in_child

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]


def test_forked_child_gets_a_new_client_and_the_parents_connection_survives(
    configured: str, loop_factory: LoopFactory
) -> None:
    loop = loop_factory()

    async def identify() -> tuple[int, int]:
        client = get_redis()
        # Bounded: if the child had unregistered our socket from the (shared) epoll set, or
        # consumed our replies, this would hang instead of answering.
        async with asyncio.timeout(5):
            return id(client), int(await client.client_id())

    try:
        parent_client, parent_connection = loop.run_until_complete(identify())

        def child() -> dict[str, Any]:
            async def work() -> dict[str, Any]:
                client = get_redis()
                gc.collect()  # inherited objects must not be collected into closing anything
                return {
                    "connection": int(await client.client_id()),
                    "published": await publish("fork-test", "from the child"),
                }

            return run_on_new_loop(loop_factory, work())

        report = in_child(child)
        assert report["published"] is True
        assert report["connection"] != parent_connection

        # Same client object, same server-side connection (no reconnect): the child sent nothing
        # on it (no QUIT), did not close it and did not read from it.
        assert loop.run_until_complete(identify()) == (parent_client, parent_connection)
        assert loop.run_until_complete(publish("fork-test", "from the parent")) is True
    finally:
        loop.run_until_complete(aclose_all())
        loop.close()
