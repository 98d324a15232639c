"""Asking the LLM: a timeout, retries, and validation of the JSON it answers with."""

from __future__ import annotations

import asyncio
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

    Raises `LLMError` naming `what` (for example "tutorial for 'Variables'") and the last cause,
    after `options.retries` retries.
    """
    last: str = ""
    for attempt in range(options.retries + 1):
        try:
            answer = await asyncio.wait_for(llm.complete_json(prompt), options.timeout_s)
            return model.model_validate(answer)
        except LLMError as exc:
            last = str(exc)
        except asyncio.TimeoutError:
            last = f"no answer within {options.timeout_s:g} s (LLM_TIMEOUT_S)"
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "answer"
            last = f"invalid answer ({where}: {first['msg']})"
        if attempt < options.retries:
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    attempts = options.retries + 1
    raise LLMError(f"{what} failed after {attempts} attempt{'s' * (attempts > 1)}: {last}")
