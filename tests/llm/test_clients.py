"""The docs/llm_clients.md recipe for any other client: a per-loop SDK object over
`loopsafe.http.get_http(name)`, against a real OpenAI-compatible server, over loops and a fork."""

from __future__ import annotations

import gc
import os
from typing import Any

import httpx
import pytest

import loopsafe.http
import loopsafe.llm
from loopsafe import aclose_all, loop_local

from ..conftest import LoopFactory, run_on_new_loop
from ..forking import in_child


class EchoAPI:
    """An SDK of the usual shape: it takes an `httpx.AsyncClient` and closes it in `aclose()`."""

    def __init__(self, http_client: httpx.AsyncClient) -> None:
        self.http = http_client

    async def ask(self, prompt: str) -> tuple[str, str]:
        """The answer, and the client address the server saw (tells pooled connections apart)."""
        response = await self.http.post(
            "chat/completions",
            json={"model": "echo-1", "messages": [{"role": "user", "content": prompt}]},
        )
        body = response.json()
        return body["choices"][0]["message"]["content"], body["system_fingerprint"]

    async def aclose(self) -> None:
        await self.http.aclose()


# --- the recipe (keep in step with docs/llm_clients.md) ---------------------------------------


@loop_local(name="echo-api")
def echo_api() -> EchoAPI:
    return EchoAPI(http_client=loopsafe.http.get_http("echo"))


# -------------------------------------------------------------------------------------------------


async def ask(prompt: str) -> tuple[str, str]:
    return await echo_api().ask(prompt)


@pytest.fixture(autouse=True)
def configured(llm_server_url: str) -> None:
    loopsafe.llm.configure(http={"echo": {"base_url": llm_server_url, "timeout": 10}})


def test_one_client_per_loop_closed_inside_its_loop(loop_factory: LoopFactory) -> None:
    async def use(n: int) -> EchoAPI:
        answer, first_peer = await echo_api().ask(f"q{n}")
        _, second_peer = await echo_api().ask(f"q{n} again")
        assert answer == f"echo: q{n}"
        assert first_peer == second_peer  # one pooled connection per loop, reused
        assert echo_api() is echo_api()
        return echo_api()

    clients = [run_on_new_loop(loop_factory, use(n)) for n in range(3)]
    assert len({id(client) for client in clients}) == 3
    assert all(client.http.is_closed for client in clients)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_new_clients_and_the_parents_connections_survive(
    loop_factory: LoopFactory,
) -> None:
    loop = loop_factory()
    try:
        _, before = loop.run_until_complete(ask("parent"))

        def child() -> dict[str, Any]:
            async def work() -> dict[str, Any]:
                gc.collect()  # whatever was inherited must not be collected into closing sockets
                answer, peer = await echo_api().ask("child")
                return {"answer": answer, "peer": peer}

            return run_on_new_loop(loop_factory, work())

        report = in_child(child)
        assert report["answer"] == "echo: child"
        assert report["peer"] != before  # the child opened its own connection
        # The parent still talks on the very same connection: nothing in the child wrote to,
        # closed, or unregistered it.
        assert loop.run_until_complete(ask("parent again"))[1] == before
    finally:
        loop.run_until_complete(aclose_all())
        loop.close()


async def test_closing_the_sdk_and_loopsafe_closing_its_http_client_do_not_clash() -> None:
    api = echo_api()
    assert (await api.ask("x"))[0] == "echo: x"
    await aclose_all()  # the SDK's aclose() and get_http()'s own close both run: no error
    assert api.http.is_closed
