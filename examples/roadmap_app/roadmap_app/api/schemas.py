"""Request and response bodies of the HTTP API, with the validation rules for user input."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = (
    "ConceptOut",
    "ContentOut",
    "ExecutionLogOut",
    "JobAccepted",
    "ModuleOut",
    "ProgressOut",
    "ReviewIn",
    "RoadmapCreate",
    "RoadmapOut",
    "RoadmapSummary",
    "StageOut",
)

Level = Literal["beginner", "intermediate", "advanced"]
_LETTER = re.compile(r"[^\W\d_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class _Input(BaseModel):
    # Unknown fields are rejected: a typo such as "weeklyHours" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RoadmapCreate(_Input):
    goal: Annotated[str, StringConstraints(min_length=3, max_length=200)] = Field(
        description="What you want to learn, e.g. 'Learn Python for data analysis'."
    )
    level: Level = "beginner"
    weekly_hours: int = Field(default=5, ge=1, le=80, strict=True)
    review: bool = Field(default=False, description="Pause for a human review of the curriculum.")

    @field_validator("goal")
    @classmethod
    def _goal_is_words(cls, goal: str) -> str:
        if _CONTROL.search(goal):
            raise PydanticCustomError(
                "goal_control_chars", "goal must not contain control characters"
            )
        if not _LETTER.search(goal):
            raise PydanticCustomError(
                "goal_without_words",
                "goal must describe what you want to learn in words, e.g. 'Learn Python'",
            )
        return " ".join(goal.split())


class ReviewIn(_Input):
    approve: bool = Field(strict=True)
    feedback: Annotated[str, StringConstraints(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _rejection_says_why(self) -> ReviewIn:
        if not self.approve and not self.feedback:
            raise PydanticCustomError(
                "feedback_required",
                "feedback is required when rejecting: say what the new curriculum should change",
            )
        return self


class JobAccepted(BaseModel):
    task_id: uuid.UUID
    status: str


class ProgressOut(BaseModel):
    done: int
    total: int
    percent: int


class ContentOut(BaseModel):
    tutorial: str
    resources: list[dict[str, Any]]
    quiz: list[dict[str, Any]]
    created_at: dt.datetime


class ConceptOut(BaseModel):
    id: int
    slug: str
    position: int
    title: str
    summary: str
    estimated_hours: float
    has_content: bool
    content: ContentOut | None = None


class ModuleOut(BaseModel):
    id: int
    position: int
    title: str
    description: str
    concepts: list[ConceptOut]


class StageOut(BaseModel):
    id: int
    position: int
    title: str
    description: str
    progress: ProgressOut
    modules: list[ModuleOut]


class ExecutionLogOut(BaseModel):
    step: str
    status: str
    duration_ms: int | None
    worker: str | None
    detail: dict[str, Any]
    created_at: dt.datetime


class RoadmapSummary(BaseModel):
    id: uuid.UUID
    goal: str
    level: str
    weekly_hours: int
    review_requested: bool
    status: str
    error: str | None
    title: str | None
    progress: ProgressOut
    created_at: dt.datetime


class RoadmapOut(RoadmapSummary):
    summary: str | None
    feedback: str | None
    intent: dict[str, Any] | None
    curriculum_version: int
    updated_at: dt.datetime
    completed_at: dt.datetime | None
    stages: list[StageOut]
    logs: list[ExecutionLogOut]
