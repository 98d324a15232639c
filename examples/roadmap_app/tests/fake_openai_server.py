"""A minimal OpenAI-compatible chat-completions server for the OpenAI provider's tests, which
also speaks Anthropic's Messages API (``POST /v1/messages``; the Anthropic SDK's base URL is the
server's root) for the Anthropic provider's.

It answers with the offline provider's JSON for the prompt kind named in the system message (the
pipeline's own prompts, or a test's ``kind=…`` with the context as JSON), or
with text that is not JSON when the user message says so, or with a 500 when it says
``ALWAYS 500``. Calls are counted per user message (``GET /v1/calls?user=…``). Like a provider
with a rate limit, it answers 429 with ``Retry-After: 1`` while more than
``$FAKE_OPENAI_MAX_CONCURRENCY`` calls are in flight (unset: no limit), each call taking
``$FAKE_OPENAI_LATENCY_MS``; ``GET /v1/stats`` reports calls served, rejected and the most at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from roadmap_app.llm import OfflineProvider, Prompt, PromptKind

app = FastAPI()
_offline = OfflineProvider()
KINDS: tuple[PromptKind, ...] = ("intent", "curriculum", "tutorial", "resources", "quiz")
_MAX_CONCURRENCY = int(os.environ.get("FAKE_OPENAI_MAX_CONCURRENCY") or 0)
_LATENCY_S = int(os.environ.get("FAKE_OPENAI_LATENCY_MS") or 0) / 1000
_calls: collections.Counter[str] = collections.Counter()
# The model named by the last call with each user message, and the API it came through.
_models: dict[str, str] = {}
_apis: dict[str, str] = {}
_stats = {"served": 0, "rejected": 0, "max_in_flight": 0}
_in_flight = 0


@app.get("/v1/calls")
async def calls(user: str) -> int:
    return _calls[user]


@app.get("/v1/model")
async def model(user: str) -> str | None:
    return _models.get(user)


@app.get("/v1/api")
async def api(user: str) -> str | None:
    return _apis.get(user)


@app.get("/v1/stats")
async def stats() -> dict[str, int]:
    return _stats


@app.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> dict[str, Any] | JSONResponse:
    global _in_flight
    _in_flight += 1
    _stats["max_in_flight"] = max(_stats["max_in_flight"], _in_flight)
    try:
        if _MAX_CONCURRENCY and _in_flight > _MAX_CONCURRENCY:
            _stats["rejected"] += 1
            error = {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}
            return JSONResponse(error, status_code=429, headers={"Retry-After": "1"})
        await asyncio.sleep(_LATENCY_S)
        answer = await _answer(await request.json())
        _stats["served"] += 1
        return answer
    finally:
        _in_flight -= 1


# The pipeline's own prompts name the answer's shape in the system message; the tests' prompts say
# ``kind=…`` and carry their context as JSON.
_SHAPES: tuple[tuple[str, PromptKind], ...] = (
    ('"stages"', "curriculum"),
    ('"subject"', "intent"),
    ('"markdown"', "tutorial"),
    ('"resources"', "resources"),
    ('"questions"', "quiz"),
)


def _read_prompt(system: str, user: str) -> tuple[PromptKind, dict[str, Any]]:
    """The prompt's kind and the context the offline provider answers from."""
    for kind in KINDS:
        if f"kind={kind}" in system:
            return kind, json.loads(user)
    kind = next(kind for marker, kind in _SHAPES if marker in system)
    goal = re.search(r"Goal: (.+?)(?: \((\w+)\)\.)?$", user, re.MULTILINE)
    level = re.search(r"Level: (\w+)", user)
    concept = re.search(r"(?:concept|for) '(.+?)'|^## (.+)$", user, re.MULTILINE)
    context = {
        "goal": goal.group(1) if goal else user[:60],
        "level": (level.group(1) if level else goal and goal.group(2)) or "beginner",
        "concept": next((g for g in concept.groups() if g), "") if concept else "",
    }
    return kind, context


async def _reply(system: str, user: str, model: str, api: str) -> str | JSONResponse:
    """The answer's text for a prompt, or the error response the user message asks for."""
    _calls[user] += 1
    _models[user] = model
    _apis[user] = api
    if "ALWAYS 500" in user:
        return JSONResponse({"error": {"message": "server error"}}, status_code=500)
    if "NOT JSON" in user:
        return "Sorry, I can only answer in prose."
    kind, context = _read_prompt(system, user)
    return json.dumps(await _offline.complete_json(Prompt(kind, system, user, context)))


async def _answer(body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    text = await _reply(system, user, str(body["model"]), "openai")
    if isinstance(text, JSONResponse):
        return text
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@app.post("/v1/messages", response_model=None)
async def messages(request: Request) -> dict[str, Any] | JSONResponse:
    """Anthropic's Messages API: `system` beside the messages, the answer in content blocks."""
    body = await request.json()
    # A key (`x-api-key`, or a bearer token from newer SDKs), the API version and max_tokens are
    # what the real API refuses a request without.
    keyed = request.headers.get("x-api-key") or request.headers.get("authorization")
    if not keyed or not request.headers.get("anthropic-version") or "max_tokens" not in body:
        error = {"type": "invalid_request_error", "message": "key, version, max_tokens required"}
        return JSONResponse({"type": "error", "error": error}, status_code=400)
    user = body["messages"][0]["content"]
    text = await _reply(body.get("system", ""), user, str(body["model"]), "anthropic")
    if isinstance(text, JSONResponse):
        error = {"type": "api_error", "message": "server error"}
        return JSONResponse({"type": "error", "error": error}, status_code=text.status_code)
    _stats["served"] += 1
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
