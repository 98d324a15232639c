"""Asking the LLM: retries under one deadline, and validation of the JSON it answers with."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from roadmap_app.llm import LLMError, LLMProvider, Prompt

__all__ = ("Brief", "LLMOptions", "ask")

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Brief:
    """The learner's request, as every prompt needs it."""

    goal: str
    level: str
    weekly_hours: int


@dataclass(frozen=True)
class LLMOptions:
    retries: int = 2
    timeout_s: float = 60.0
    concurrency: int = 6


async def ask(
    llm: LLMProvider, prompt: Prompt, model: type[M], options: LLMOptions, *, what: str
) -> M:
    """Send `prompt`, validate the answer as `model`; retry on errors and invalid answers.

    The only retry layer (providers do not retry on their own), and one deadline for the whole
    call: `options.timeout_s` covers every attempt and the pauses between them.

    Raises `LLMError` naming `what` (for example "tutorial for 'Variables'") and the last cause,
    after `options.retries` retries or when the deadline is over.
    """
    last: str = ""
    deadline = time.monotonic() + options.timeout_s
    attempts = 0
    while attempts <= options.retries:
        attempts += 1
        try:
            answer = await asyncio.wait_for(llm.complete_json(prompt), deadline - time.monotonic())
            return model.model_validate(answer)
        except LLMError as exc:
            last = str(exc)
        except asyncio.TimeoutError:
            last = f"no answer within {options.timeout_s:g} s (LLM_TIMEOUT_S)"
            break
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "answer"
            last = f"invalid answer ({where}: {first['msg']})"
        pause = min(0.05 * 2 ** (attempts - 1), 1.0)
        if attempts > options.retries or time.monotonic() + pause >= deadline:
            break
        await asyncio.sleep(pause)
    raise LLMError(f"{what} failed after {attempts} attempt{'s' * (attempts > 1)}: {last}")
