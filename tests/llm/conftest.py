"""A real OpenAI-compatible HTTP server for the LLM client tests: a tiny ASGI app under uvicorn."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest
import uvicorn

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
    if scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
        request = json.loads(body)
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
