"""SQLAlchemy models: a roadmap, its curriculum tree, generated content and execution logs."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = (
    "TERMINAL_STATUSES",
    "Base",
    "Concept",
    "ConceptContent",
    "CurriculumVersion",
    "ExecutionLog",
    "Module",
    "Roadmap",
    "RoadmapStatus",
    "Stage",
)


class RoadmapStatus(str, enum.Enum):
    """Where a roadmap is in the pipeline; the order of members is the pipeline's order."""

    pending = "pending"
    analyzing = "analyzing"
    designing = "designing"
    human_review_pending = "human_review_pending"
    review_submitted = "review_submitted"
    generating_content = "generating_content"
    completed = "completed"
    failed = "failed"
    # Stopped by its user (`POST …/cancel`); saved content is kept and `resume` continues it.
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset(
    {RoadmapStatus.completed, RoadmapStatus.failed, RoadmapStatus.cancelled}
)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now_column() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Roadmap(Base):
    """One learning goal and the job that turns it into a curriculum with content."""

    __tablename__ = "roadmaps"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    goal: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(20))
    weekly_hours: Mapped[int] = mapped_column(Integer)
    review_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[RoadmapStatus] = mapped_column(
        Enum(RoadmapStatus, name="roadmap_status", native_enum=False, length=32),
        default=RoadmapStatus.pending,
        index=True,
    )
    error: Mapped[str | None] = mapped_column(Text, default=None)
    feedback: Mapped[str | None] = mapped_column(Text, default=None)
    # The reviewer's last decision, kept so a lost `resume_after_review` job can be re-sent.
    review_approved: Mapped[bool | None] = mapped_column(Boolean, default=None)
    intent: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    title: Mapped[str | None] = mapped_column(String(300), default=None)
    summary: Mapped[str | None] = mapped_column(Text, default=None)
    # Bumped each time the curriculum is (re)designed, so a regenerated one is distinguishable.
    curriculum_version: Mapped[int] = mapped_column(Integer, default=0)
    # True once the curriculum is final: approved by a reviewer, or no review was asked for.
    # Resuming uses it to decide between redesigning and generating content.
    curriculum_ready: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = _now_column()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # The running job's lease: its token and when it lapses unless heartbeated. Every write a job
    # makes is conditional on still holding it, so a second job (or a zombie) cannot interfere.
    lease_owner: Mapped[uuid.UUID | None] = mapped_column(default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), default=None
    )
    # Concepts whose content failed for good in the last run: [{"concept_id", "slug", "reason"}].
    failed_concepts: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")

    stages: Mapped[list[Stage]] = relationship(
        back_populates="roadmap",
        order_by="Stage.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Stage(Base):
    """A phase of the roadmap (for example "Foundations"), holding modules in order."""

    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("roadmap_id", "position", name="uq_stage_position"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    roadmap_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("roadmaps.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")

    roadmap: Mapped[Roadmap] = relationship(back_populates="stages")
    modules: Mapped[list[Module]] = relationship(
        back_populates="stage",
        order_by="Module.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Module(Base):
    """A group of related concepts inside a stage."""

    __tablename__ = "modules"
    __table_args__ = (UniqueConstraint("stage_id", "position", name="uq_module_position"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")

    stage: Mapped[Stage] = relationship(back_populates="modules")
    concepts: Mapped[list[Concept]] = relationship(
        back_populates="module",
        order_by="Concept.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Concept(Base):
    """One thing to learn; its content is generated and committed exactly once."""

    __tablename__ = "concepts"
    __table_args__ = (
        UniqueConstraint("roadmap_id", "slug", name="uq_concept_slug"),
        UniqueConstraint("module_id", "position", name="uq_concept_position"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # Denormalised from module → stage so progress queries need no joins.
    roadmap_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("roadmaps.id", ondelete="CASCADE"), index=True
    )
    module_id: Mapped[int] = mapped_column(ForeignKey("modules.id", ondelete="CASCADE"))
    stage_position: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    slug: Mapped[str] = mapped_column(String(120))
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(Text, default="")
    estimated_hours: Mapped[float] = mapped_column(default=1.0)

    module: Mapped[Module] = relationship(back_populates="concepts")
    content: Mapped[ConceptContent | None] = relationship(
        back_populates="concept", cascade="all, delete-orphan", passive_deletes=True
    )


class ConceptContent(Base):
    """Tutorial, resources and quiz of one concept.

    The concept id is the primary key: a second insert for the same concept (a resumed or
    re-delivered job) conflicts instead of duplicating, which is what makes re-runs idempotent.
    """

    __tablename__ = "concept_content"

    concept_id: Mapped[int] = mapped_column(
        ForeignKey("concepts.id", ondelete="CASCADE"), primary_key=True
    )
    roadmap_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("roadmaps.id", ondelete="CASCADE"), index=True
    )
    tutorial: Mapped[str] = mapped_column(Text)
    resources: Mapped[list[Any]] = mapped_column(default=list)
    quiz: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = _now_column()

    concept: Mapped[Concept] = relationship(back_populates="content")


class CurriculumVersion(Base):
    """One designed curriculum of a roadmap, kept when a review asks for a new one.

    The roadmap's stages → modules → concepts are always the newest version; this keeps each
    version as designed (its stages as nested JSON) with the reviewer's feedback that produced
    it, so a rejected curriculum is not lost.
    """

    __tablename__ = "curriculum_versions"

    roadmap_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("roadmaps.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    summary: Mapped[str] = mapped_column(Text, default="")
    # The reviewer's words that asked for this version; null for the first design.
    feedback: Mapped[str | None] = mapped_column(Text, default=None)
    concepts: Mapped[int] = mapped_column(Integer)
    stages: Mapped[list[Any]] = mapped_column()
    created_at: Mapped[dt.datetime] = _now_column()


class ExecutionLog(Base):
    """One step of one job: what ran, where, how long, and how it ended."""

    __tablename__ = "execution_logs"
    __table_args__ = (Index("ix_execution_logs_roadmap_created", "roadmap_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    roadmap_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("roadmaps.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    duration_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = _now_column()
