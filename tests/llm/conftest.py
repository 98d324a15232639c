"""A real OpenAI-compatible HTTP server for the LLM client tests: a tiny ASGI app under uvicorn.

Besides echoing, it plays a provider with a rate limit. A model named ``busy:<cap>:<ms>:<tag>``
answers after ``<ms>`` milliseconds and with 429 + Retry-After whenever more than ``<cap>`` such
calls are in flight; ``throttle:<seconds>:<tag>`` answers its first call with 429 and
``Retry-After: <seconds>``. ``GET /v1/stats/<tag>`` reports what calls under a tag saw.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn

from loopsafe.llm import _settings
from loopsafe.redis import _client as redis_client
from loopsafe.testing import free_port

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        event = await receive()
        body += bytes(event.get("body", b""))
        if not event.get("more_body"):
            return bytes(body)


async def _respond(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_429(send: Send, retry_after: str) -> None:
    body = json.dumps({"error": {"message": "rate limited", "type": "rate_limit"}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", retry_after.encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TagStats:
    """What the calls under one tag saw: served, rejected with 429, and the most at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self.rejected = 0


#: Per tag; touched only on the server's own event loop.
STATS: dict[str, TagStats] = {}


async def _limited_provider(model: str, send: Send) -> bool:
    """Play a provider with a limit for ``busy:``/``throttle:`` models; False for any other."""
    kind, _, rest = model.partition(":")
    if kind == "busy":
        cap, delay_ms, tag = rest.split(":", 2)
        stats = STATS.setdefault(tag, TagStats())
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if stats.in_flight > int(cap):
                stats.rejected += 1
                await _respond_429(send, "1")
                return True
            await asyncio.sleep(int(delay_ms) / 1000)
            stats.served += 1
        finally:
            stats.in_flight -= 1
        return False
    if kind == "throttle":
        seconds, tag = rest.split(":", 1)
        stats = STATS.setdefault(tag, TagStats())
        if stats.rejected == 0:
            stats.rejected += 1
            await _respond_429(send, seconds)
            return True
        stats.served += 1
    return False


async def openai_compatible_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers /v1/models and /v1/chat/completions like an OpenAI server (echoing the prompt).

    ``system_fingerprint`` carries the client's address (``host:port``), so a test can tell whether
    two requests travelled on the same pooled connection.
    """
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    client_host, client_port = scope["client"]
    peer = f"{client_host}:{client_port}"
    if scope["path"] == "/v1/models" and scope["method"] == "GET":
        await _respond(
            send,
            200,
            {
                "object": "list",
                "data": [{"id": "echo-1", "object": "model", "created": 0, "owned_by": peer}],
            },
        )
        return
    if scope["path"].startswith("/v1/stats/"):
        stats = STATS.get(scope["path"].removeprefix("/v1/stats/"), TagStats())
        await _respond(send, 200, {k: v for k, v in vars(stats).items() if k != "in_flight"})
        return
    if scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
        request = json.loads(body)
        if await _limited_provider(request["model"], send):
            return
        prompt = request["messages"][-1]["content"]
        await _respond(
            send,
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request["model"],
                "system_fingerprint": peer,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"echo: {prompt}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            },
        )
        return
    await _respond(send, 404, {"error": {"message": f"no route {scope['path']}"}})


@pytest.fixture(scope="session")
def llm_server_url() -> Iterator[str]:
    """Base URL (``http://127.0.0.1:<port>/v1``) of the OpenAI-compatible test server."""
    port = free_port()
    config = uvicorn.Config(
        openai_compatible_app,
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=60,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="llm-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test LLM server did not start on port {port}")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _fresh_llm_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts unconfigured, with no provider keys from the machine's environment."""
    for variable in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "LOOPSAFE_LLM_NAMESPACE",
        "LOOPSAFE_PROCESSES",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(_settings, "_settings", None)
    monkeypatch.setattr(redis_client, "_settings", None)


@pytest.fixture
def namespace() -> str:
    """Redis key prefix no other test (or engineer sharing the server) uses."""
    return f"loopsafe-test:{uuid.uuid4().hex[:12]}"


def stats(base_url: str, tag: str) -> dict[str, int]:
    """What the test server saw for the calls under `tag`."""
    response = httpx.get(f"{base_url}/stats/{tag}", timeout=10)
    response.raise_for_status()
    found: dict[str, int] = response.json()
    return found
