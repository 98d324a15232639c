"""The docs/llm_clients.md recipe: loop_local httpx.AsyncClient and openai.AsyncOpenAI clients
talk to a real OpenAI-compatible server from many loops, threads and a forked child."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from loopsafe import LoopLocal, aclose_all, loop_local

from ..conftest import LoopFactory, run_on_new_loop
from ..forking import in_child

# --- the recipe (keep in step with docs/llm_clients.md) ---------------------------------------

# What a forked child inherited: kept alive and untouched, so nothing in the child ever closes
# (or unregisters from the parent's event loop) a socket the parent is still using.
_inherited: list[object] = []


def make_clients(base_url: str) -> tuple[LoopLocal[httpx.AsyncClient], LoopLocal[AsyncOpenAI]]:
    @loop_local(name="test-http", drop=_inherited.append)
    def http_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base_url, timeout=10)

    @loop_local(name="test-llm", drop=_inherited.append)
    def llm() -> AsyncOpenAI:
        return AsyncOpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=10)

    return http_client, llm


async def ask(llm: LoopLocal[AsyncOpenAI], prompt: str) -> tuple[str, str]:
    """One chat completion; returns the answer and the client address the server saw."""
    async with asyncio.timeout(10):  # a broken connection must fail the test, not hang it
        reply = await llm().chat.completions.create(
            model="echo-1", messages=[{"role": "user", "content": prompt}]
        )
    assert reply.system_fingerprint is not None
    return str(reply.choices[0].message.content), reply.system_fingerprint


# -------------------------------------------------------------------------------------------------


def test_httpx_client_one_per_loop_closed_inside_its_loop(
    llm_server_url: str, loop_factory: LoopFactory
) -> None:
    http_client, _ = make_clients(llm_server_url)

    async def use() -> httpx.AsyncClient:
        client = http_client()
        assert client is http_client()
        response = await client.get("models")
        assert response.json()["data"][0]["id"] == "echo-1"
        assert not client.is_closed
        return client

    clients = [run_on_new_loop(loop_factory, use()) for _ in range(3)]
    assert len({id(client) for client in clients}) == 3
    assert all(client.is_closed for client in clients)


def test_openai_client_from_several_loops(llm_server_url: str, loop_factory: LoopFactory) -> None:
    _, llm = make_clients(llm_server_url)

    async def use(n: int) -> AsyncOpenAI:
        answer, first_peer = await ask(llm, f"q{n}")
        _, second_peer = await ask(llm, f"q{n} again")
        assert answer == f"echo: q{n}"
        assert first_peer == second_peer  # one pooled connection per loop, reused
        return llm()

    clients = [run_on_new_loop(loop_factory, use(n)) for n in range(3)]
    assert len({id(client) for client in clients}) == 3
    assert all(client.is_closed() for client in clients)


def test_openai_client_from_threads_each_with_its_own_loop(llm_server_url: str) -> None:
    _, llm = make_clients(llm_server_url)
    barrier = threading.Barrier(4)
    results: dict[int, tuple[AsyncOpenAI, set[str], list[str]]] = {}
    errors: list[BaseException] = []

    async def use(worker: int) -> None:
        barrier.wait(timeout=20)
        answers, peers = [], set()
        for n in range(3):
            answer, peer = await ask(llm, f"{worker}-{n}")
            answers.append(answer)
            peers.add(peer)
        results[worker] = (llm(), peers, answers)

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
    assert sorted(results) == [0, 1, 2, 3]
    for worker, (client, peers, answers) in results.items():
        assert answers == [f"echo: {worker}-{n}" for n in range(3)]
        assert len(peers) == 1
        assert client.is_closed()
    assert len({id(client) for client, _, _ in results.values()}) == 4
    assert len({next(iter(peers)) for _, peers, _ in results.values()}) == 4


@pytest.mark.both_loops
async def test_concurrent_requests_on_one_loop_share_one_client(llm_server_url: str) -> None:
    _, llm = make_clients(llm_server_url)
    answers = await asyncio.gather(*(ask(llm, f"c{n}") for n in range(8)))
    assert [answer for answer, _ in answers] == [f"echo: c{n}" for n in range(8)]
    assert len(llm) == 1
    client = llm()
    await aclose_all()
    assert client.is_closed()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_new_clients_and_the_parents_connections_survive(
    llm_server_url: str, loop_factory: LoopFactory
) -> None:
    http_client, llm = make_clients(llm_server_url)
    loop = loop_factory()

    async def parent_peers() -> tuple[str, str]:
        _, llm_peer = await ask(llm, "parent")
        async with asyncio.timeout(10):
            response = await http_client().get("models")
        return llm_peer, response.json()["data"][0]["owned_by"]

    try:
        before = loop.run_until_complete(parent_peers())

        def child() -> dict[str, Any]:
            async def work() -> dict[str, Any]:
                gc.collect()  # whatever was inherited must not be collected into closing sockets
                answer, llm_peer = await ask(llm, "child")
                response = await http_client().get("models")
                return {
                    "answer": answer,
                    "peers": [llm_peer, response.json()["data"][0]["owned_by"]],
                }

            return run_on_new_loop(loop_factory, work())

        report = in_child(child)
        assert report["answer"] == "echo: child"
        assert not set(report["peers"]) & set(before)  # the child opened its own connections
        # The parent's clients still use the very same connections: nothing in the child wrote
        # to, closed, or unregistered them.
        assert loop.run_until_complete(parent_peers()) == before
    finally:
        loop.run_until_complete(aclose_all())
        loop.close()
