"""A minimal OpenAI-compatible chat-completions server for the OpenAI provider's tests.

It answers with the offline provider's JSON for the prompt kind named in the system message, or
with text that is not JSON when the user message says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI, Request

from roadmap_app.llm import OfflineProvider, Prompt

app = FastAPI()
_offline = OfflineProvider()
KINDS = ("intent", "curriculum", "tutorial", "resources", "quiz")


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> dict[str, Any]:
    body = await request.json()
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if "NOT JSON" in user:
        text = "Sorry, I can only answer in prose."
    else:
        kind = next(k for k in KINDS if f"kind={k}" in system)
        context = json.loads(user)
        text = json.dumps(await _offline.complete_json(Prompt(kind, system, user, context)))  # type: ignore[arg-type]
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
