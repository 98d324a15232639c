"""get_openai(), get_anthropic(), get_http(): one client per loop, closed with it, dropped on fork."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import threading
from typing import Any

import anthropic
import httpx
import openai
import pytest

from loopsafe import WrongLoopError, aclose_all
from loopsafe.http import get_http
from loopsafe.llm import configure, get_anthropic, get_openai

from ..conftest import LoopFactory, run_on_new_loop
from ..forking import in_child


@pytest.fixture
def configured(llm_server_url: str) -> str:
    configure(
        openai_api_key="test-key",
        openai_base_url=llm_server_url,
        anthropic_api_key="test-key",
        anthropic_base_url=llm_server_url,
        max_retries=0,
        timeout=10,
        http={"llm": {"base_url": llm_server_url}},
    )
    return llm_server_url


async def ask(prompt: str) -> tuple[str, str]:
    """One chat completion through get_openai(); the answer and the client address the server saw."""
    reply = await get_openai().chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": prompt}]
    )
    assert reply.system_fingerprint is not None
    return str(reply.choices[0].message.content), reply.system_fingerprint


def test_each_loop_gets_its_own_clients_closed_inside_that_loop(
    configured: str, loop_factory: LoopFactory
) -> None:
    async def use(n: int) -> tuple[openai.AsyncOpenAI, httpx.AsyncClient, anthropic.AsyncAnthropic]:
        answer, first_peer = await ask(f"q{n}")
        _, second_peer = await ask(f"q{n} again")
        assert answer == f"echo: q{n}"
        assert first_peer == second_peer  # one pooled connection per loop, reused
        response = await get_http("llm").get("models")
        assert response.json()["data"][0]["id"] == "echo-1"
        assert get_openai() is get_openai()
        assert get_http("llm") is get_http("llm") is not get_http()
        return get_openai(), get_http("llm"), get_anthropic()

    made = [run_on_new_loop(loop_factory, use(n)) for n in range(3)]
    assert len({id(client) for clients in made for client in clients}) == 9
    for llm, http, claude in made:
        assert isinstance(claude, anthropic.AsyncAnthropic)
        assert llm.is_closed()
        assert http.is_closed
        assert claude.is_closed()


def test_threads_each_with_their_own_loop(configured: str) -> None:
    barrier = threading.Barrier(4)
    results: dict[int, tuple[openai.AsyncOpenAI, set[str]]] = {}
    errors: list[BaseException] = []

    async def use(worker: int) -> None:
        barrier.wait(timeout=20)
        peers = {(await ask(f"{worker}-{n}"))[1] for n in range(3)}
        results[worker] = (get_openai(), peers)

    def run(worker: int) -> None:
        try:
            asyncio.run(use(worker))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len({id(client) for client, _ in results.values()}) == 4
    assert all(len(peers) == 1 and client.is_closed() for client, peers in results.values())
    assert len({next(iter(peers)) for _, peers in results.values()}) == 4


@pytest.mark.both_loops
async def test_a_new_configure_gives_new_clients_and_closes_both_at_loop_end(
    configured: str,
) -> None:
    first = get_openai()
    configure(openai_api_key="other-key", openai_base_url=configured, max_retries=0)
    second = get_openai()
    assert second is not first
    assert second.api_key == "other-key"
    assert (await ask("after"))[0] == "echo: after"
    await aclose_all()
    assert first.is_closed()
    assert second.is_closed()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_new_clients_and_the_parents_connections_survive(
    configured: str, loop_factory: LoopFactory
) -> None:
    loop = loop_factory()

    async def parent_peers() -> tuple[str, str]:
        _, llm_peer = await ask("parent")
        response = await get_http("llm").get("models")
        return llm_peer, response.json()["data"][0]["owned_by"]

    try:
        before = loop.run_until_complete(parent_peers())

        def child() -> dict[str, Any]:
            async def work() -> dict[str, Any]:
                gc.collect()  # whatever was inherited must not be collected into closing sockets
                answer, llm_peer = await ask("child")
                response = await get_http("llm").get("models")
                return {
                    "answer": answer,
                    "peers": [llm_peer, response.json()["data"][0]["owned_by"]],
                }

            return run_on_new_loop(loop_factory, work())

        report = in_child(child)
        assert report["answer"] == "echo: child"
        assert not set(report["peers"]) & set(before)  # the child opened its own connections
        # The very same connections still serve the parent: the child neither wrote to, closed,
        # nor unregistered them.
        assert loop.run_until_complete(parent_peers()) == before
    finally:
        loop.run_until_complete(aclose_all())
        loop.close()


def test_a_loop_closed_without_disposal_releases_its_clients_quietly(configured: str) -> None:
    """The clients of a loop that never reached shutdown_asyncgens() are dropped without I/O
    (``filterwarnings = error`` turns an "unclosed transport" warning into a failure)."""

    async def use() -> openai.AsyncOpenAI:
        await ask("abandoned")
        return get_openai()

    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(use())
    loop.close()
    del loop
    gc.collect()
    assert not client.is_closed()  # not closed: nothing was awaited on a dead loop
    assert (asyncio.run(ask("next loop")))[0] == "echo: next loop"


@pytest.mark.parametrize(
    ("package", "getter"), [("loopsafe.llm", "get_openai()"), ("loopsafe.http", "get_http('llm')")]
)
def test_a_client_used_on_another_loop_raises_wrong_loop_error(
    configured: str, loop_factory: LoopFactory, package: str, getter: str
) -> None:
    async def request(client: Any) -> None:
        if isinstance(client, httpx.AsyncClient):
            await client.get("models")
        else:
            await client.models.list()

    async def keep() -> Any:
        client = get_openai() if getter == "get_openai()" else get_http("llm")
        await request(client)
        return client

    first = loop_factory()
    try:
        client = first.run_until_complete(keep())
        with pytest.raises(
            WrongLoopError,
            match=rf"^This client from {re.escape(package)}\.{re.escape(getter)} was created on .* and "
            rf"used on .*\. Call {re.escape(getter)} where you use the client",
        ):
            run_on_new_loop(loop_factory, request(client))
    finally:
        first.run_until_complete(aclose_all())
        first.close()
