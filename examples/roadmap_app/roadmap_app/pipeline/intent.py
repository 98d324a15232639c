"""Intent analysis: what the learner wants, in a structured form the curriculum builds on."""

from __future__ import annotations

from pydantic import BaseModel, Field

from roadmap_app.llm import LLMProvider, Prompt
from roadmap_app.pipeline.calls import Brief, LLMOptions, ask

__all__ = ("Intent", "analyze_intent")


class Intent(BaseModel):
    subject: str = Field(min_length=1, max_length=200)
    application: str = ""
    summary: str = Field(min_length=1)
    outcomes: list[str] = Field(min_length=1, max_length=10)
    prerequisites: list[str] = Field(default_factory=list, max_length=10)
    weeks: int = Field(ge=1, le=520)


_SYSTEM = (
    "You are an experienced learning designer. Answer with one JSON object only: "
    '{"subject": str, "application": str, "summary": str, "outcomes": [str], '
    '"prerequisites": [str], "weeks": int}.'
)


async def analyze_intent(llm: LLMProvider, brief: Brief, options: LLMOptions) -> Intent:
    """Turn the learner's goal into subject, outcomes and a realistic duration."""
    prompt = Prompt(
        kind="intent",
        system=_SYSTEM,
        user=(
            f"Goal: {brief.goal}\nLevel: {brief.level}\nTime available: "
            f"{brief.weekly_hours} hours per week.\nDescribe what this learner needs."
        ),
        context={"goal": brief.goal, "level": brief.level, "weekly_hours": brief.weekly_hours},
    )
    return await ask(llm, prompt, Intent, options, what="intent analysis")
