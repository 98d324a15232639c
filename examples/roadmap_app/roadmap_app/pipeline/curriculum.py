"""Curriculum design: stages → modules → concepts, optionally reworked from reviewer feedback."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from roadmap_app.llm import LLMProvider, Prompt
from roadmap_app.pipeline.calls import Brief, LLMOptions, ask
from roadmap_app.pipeline.intent import Intent

__all__ = (
    "MAX_CONCEPTS",
    "ConceptPlan",
    "Curriculum",
    "ModulePlan",
    "StagePlan",
    "design_curriculum",
)

MAX_CONCEPTS = 80


class ConceptPlan(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    summary: str = ""
    estimated_hours: float = Field(default=1.0, gt=0, le=100)


class ModulePlan(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str = ""
    concepts: list[ConceptPlan] = Field(min_length=1)


class StagePlan(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str = ""
    modules: list[ModulePlan] = Field(min_length=1)


class Curriculum(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    summary: str = ""
    stages: list[StagePlan] = Field(min_length=1)

    @model_validator(mode="after")
    def _bounded(self) -> Curriculum:
        if self.concept_count > MAX_CONCEPTS:
            raise ValueError(
                f"{self.concept_count} concepts is more than the {MAX_CONCEPTS} this app handles"
            )
        return self

    @property
    def concept_count(self) -> int:
        return sum(len(m.concepts) for s in self.stages for m in s.modules)

    def as_rows(self) -> list[dict[str, Any]]:
        return [stage.model_dump() for stage in self.stages]


_SYSTEM = (
    "You are an experienced learning designer. Design a curriculum of 3-5 stages, each with "
    "2-3 modules of 2-4 concepts (20-40 concepts in total). Answer with one JSON object only: "
    '{"title": str, "summary": str, "stages": [{"title": str, "description": str, "modules": '
    '[{"title": str, "description": str, "concepts": [{"title": str, "summary": str, '
    '"estimated_hours": number}]}]}]}.'
)


async def design_curriculum(
    llm: LLMProvider,
    brief: Brief,
    intent: Intent,
    options: LLMOptions,
    *,
    version: int = 1,
    feedback: str | None = None,
) -> Curriculum:
    """Design the curriculum; `feedback` (from a rejected review) steers a new version."""
    revision = (
        f"\nA reviewer rejected the previous version with this feedback; address it:\n{feedback}"
        if feedback
        else ""
    )
    prompt = Prompt(
        kind="curriculum",
        system=_SYSTEM,
        user=(
            f"Goal: {brief.goal}\nLevel: {brief.level}\nHours per week: {brief.weekly_hours}\n"
            f"Subject: {intent.subject}\nOutcomes: {'; '.join(intent.outcomes)}{revision}"
        ),
        context={
            "goal": brief.goal,
            "level": brief.level,
            "weekly_hours": brief.weekly_hours,
            "version": version,
            "feedback": feedback or "",
        },
    )
    return await ask(llm, prompt, Curriculum, options, what="curriculum design")
