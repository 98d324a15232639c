"""Request and response bodies of the HTTP API, with the validation rules for user input."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
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
    "CurriculumVersionOut",
    "ErrorOut",
    "ExecutionLogOut",
    "FailedConceptOut",
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
# Regular expressions that the validators apply and the OpenAPI schema states, written to read the
# same in Python and in ECMA-262 (JSON Schema's dialect), so generated clients and fuzzers agree
# with the API about what is valid (issue 14). Hence no \s or \w, which differ between the two.
# Text without control characters, C0 or C1 (tab, line feed and carriage return are allowed):
NO_CONTROL_CHARACTERS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
# The rest of what Python's str.split() and str.strip() take for white space:
_SPACE = r"\t\n\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NOT_SPACE = f"[^{_SPACE}]"
# Characters that show nothing: zero-width spaces and joiners, direction marks, word joiners,
# variation selectors, fillers, the byte order mark ("\u200b\u200b\u200bx" was a valid goal).
_INVISIBLE = (
    r"\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
)
_SHOWN = f"[^{_SPACE}{_INVISIBLE}]"
# Hangul fillers are letters to Unicode, yet show nothing.
_INVISIBLE_LETTERS = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0})


def _letters_of_the_basic_plane() -> str:
    """A character class of every letter (Unicode category L*: Latin, Cyrillic, Greek, Arabic,
    Hebrew, Devanagari, CJK, kana, Hangul…) in the Basic Multilingual Plane, as ranges.

    Listed rather than negated: ECMA-262 without the `u` flag sees a character beyond the BMP as
    two surrogates, which a negated class would count as letters ("🐍🐍🐍" was a valid goal);
    a class of BMP ranges matches no surrogate, and reads alike in Python and ECMA-262.
    """
    ranges: list[str] = []
    start: int | None = None
    for code in range(0x10001):
        is_letter = (
            code < 0x10000
            and code not in _INVISIBLE_LETTERS
            and unicodedata.category(chr(code)).startswith("L")
        )
        if is_letter and start is None:
            start = code
        elif not is_letter and start is not None:
            last = code - 1
            ranges.append(f"\\u{start:04x}" + (f"-\\u{last:04x}" if last > start else ""))
            start = None
    return "[" + "".join(ranges) + "]"


_LETTER = _letters_of_the_basic_plane()
_GOAL_RULES = (
    (NO_CONTROL_CHARACTERS, "goal_control_chars", "goal must not contain control characters"),
    (
        f"{_SHOWN}[{_SPACE}{_INVISIBLE}]*{_SHOWN}[{_SPACE}{_INVISIBLE}]*{_SHOWN}",
        "goal_too_short",
        "goal should have at least 3 characters besides spaces",
    ),
    (
        _LETTER,
        "goal_without_words",
        "goal must describe what you want to learn in words, e.g. 'Learn Python': it needs a "
        "letter (of any script); emoji, symbols and digits alone are not a goal",
    ),
)


class _Input(BaseModel):
    # Unknown fields are rejected: a typo such as "weeklyHours" must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


def _whole_number(value: object) -> object:
    # JSON Schema counts 70.0 as an integer, so a client generated from the schema may send it.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class RoadmapCreate(_Input):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"goal": "Learn Python for data analysis", "level": "beginner", "weekly_hours": 6},
                {"goal": "Learn Rust", "level": "advanced", "weekly_hours": 10, "review": True},
            ]
        }
    )

    goal: Annotated[str, StringConstraints(max_length=200)] = Field(
        description="What you want to learn, e.g. 'Learn Python for data analysis'; at most 200 "
        "characters, at least 3 visible ones besides spaces, with a letter and no control "
        "characters.",
        json_schema_extra={"allOf": [{"pattern": pattern} for pattern, _, _ in _GOAL_RULES]},
    )
    level: Level = "beginner"
    weekly_hours: Annotated[int, BeforeValidator(_whole_number)] = Field(
        default=5, ge=1, le=80, strict=True
    )
    review: bool = Field(
        default=False, strict=True, description="Pause for a human review of the curriculum."
    )

    @field_validator("goal")
    @classmethod
    def _goal_is_words(cls, goal: str) -> str:
        for pattern, error_type, message in _GOAL_RULES:
            if not re.search(pattern, goal):
                raise PydanticCustomError(error_type, message)
        return " ".join(goal.split())


class ReviewIn(_Input):
    """Approve the curriculum, or reject it with feedback saying what the next version changes."""

    model_config = ConfigDict(
        # The rule `_rejection_says_why` enforces, stated for generated clients and fuzzers.
        json_schema_extra={
            "oneOf": [
                {"title": "Approval", "properties": {"approve": {"const": True}}},
                {
                    "title": "Rejection",
                    "properties": {
                        "approve": {"const": False},
                        "feedback": {"type": "string", "pattern": _NOT_SPACE},
                    },
                    "required": ["feedback"],
                },
            ],
            "examples": [
                {"approve": True},
                {"approve": False, "feedback": "Fewer theory modules, more small projects."},
            ],
        }
    )

    approve: bool = Field(strict=True)
    feedback: Annotated[str, StringConstraints(max_length=2000)] | None = Field(
        default=None,
        description="Required when rejecting: what should change. No control characters.",
        json_schema_extra={"pattern": NO_CONTROL_CHARACTERS},
    )

    @field_validator("feedback")
    @classmethod
    def _feedback_is_text(cls, feedback: str | None) -> str | None:
        if feedback is None:
            return None
        if not re.search(NO_CONTROL_CHARACTERS, feedback):
            raise PydanticCustomError(
                "feedback_control_chars", "feedback must not contain control characters"
            )
        return feedback.strip() or None

    @model_validator(mode="after")
    def _rejection_says_why(self) -> ReviewIn:
        if not self.approve and not self.feedback:
            raise PydanticCustomError(
                "feedback_required",
                "feedback is required when rejecting: say what the new curriculum should change",
            )
        return self


class ErrorOut(BaseModel):
    """Why a request was refused (every error but 422, whose `detail` lists the fields)."""

    detail: str


class JobAccepted(BaseModel):
    task_id: uuid.UUID
    status: str


class ProgressOut(BaseModel):
    done: int
    total: int
    percent: int


class ContentOut(BaseModel):
    tutorial: str = Field(description="The tutorial as the model wrote it, in Markdown.")
    tutorial_html: str = Field(
        description="The tutorial as sanitised HTML (no script, event handler or style), "
        "without a leading heading that repeats the concept's title."
    )
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
    failure_reason: str | None = Field(
        default=None,
        description="Why this concept has no content, in words for the learner, when its "
        "generation failed for good in the last run (`failed_concepts` keeps the developer's "
        "reason); null otherwise.",
    )
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


class CurriculumVersionOut(BaseModel):
    """A curriculum the roadmap had: the first design, or one a reviewer's feedback asked for."""

    version: int
    title: str
    concepts: int
    feedback: str | None = Field(
        description="The reviewer's feedback that produced this version; null for the first."
    )
    created_at: dt.datetime


class FailedConceptOut(BaseModel):
    """A concept whose content failed for good in the last run; `POST …/resume` retries it."""

    id: int
    title: str
    reason: str


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
    curriculum_versions: list[CurriculumVersionOut] = Field(
        description="Every curriculum designed for this roadmap, oldest first; the last is the "
        "current one (`stages`). A rejected version is kept here with the feedback that "
        "replaced it in the next one."
    )
    updated_at: dt.datetime
    completed_at: dt.datetime | None
    stages: list[StageOut]
    failed_concepts: list[FailedConceptOut] = Field(
        description="The concepts without content because their generation failed for good "
        "(the roadmap is then `failed`); empty otherwise."
    )
    failure_message: str | None = Field(
        description="What went wrong, in words for the learner, and what to do next (`error` "
        "keeps the developer's detail); null unless the roadmap is `failed`."
    )
    logs: list[ExecutionLogOut]
