"""Data access: every query the API, the pipeline and the workers run, as plain async functions."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from roadmap_app.models import (
    Concept,
    ConceptContent,
    CurriculumVersion,
    ExecutionLog,
    Module,
    Roadmap,
    RoadmapStatus,
    Stage,
)

__all__ = (
    "ConceptRef",
    "ContentExistsError",
    "NewContent",
    "Progress",
    "abandoned_roadmaps",
    "add_execution_log",
    "concepts_without_content",
    "create_roadmap",
    "delete_content",
    "delete_roadmap",
    "get_roadmap",
    "get_roadmap_tree",
    "lease_holder",
    "lease_until",
    "list_curriculum_versions",
    "list_execution_logs",
    "list_roadmaps",
    "progress",
    "progress_by_roadmap",
    "record_curriculum_version",
    "replace_curriculum",
    "save_content",
    "slugify",
    "take_abandoned",
    "update_roadmap",
)


class ContentExistsError(RuntimeError):
    """A curriculum replacement would have deleted saved content."""


@dataclass(frozen=True)
class ConceptRef:
    """What content generation needs to know about one concept (detached from any session)."""

    id: int
    slug: str
    title: str
    summary: str
    stage_position: int
    module_title: str


@dataclass(frozen=True)
class NewContent:
    concept_id: int
    tutorial: str
    resources: list[dict[str, Any]]
    quiz: list[dict[str, Any]]


@dataclass
class Progress:
    """Concepts with saved content, overall and per stage (keyed by stage position)."""

    done: int = 0
    total: int = 0
    stage_done: dict[int, int] = field(default_factory=dict)
    stage_total: dict[int, int] = field(default_factory=dict)

    @property
    def percent(self) -> int:
        return 100 * self.done // self.total if self.total else 0


_NON_WORD = re.compile(r"[^a-z0-9]+")


def slugify(title: str, taken: Collection[str] = ()) -> str:
    """A URL-safe identifier for `title`, made unique against `taken` with a numeric suffix."""
    base = _NON_WORD.sub("-", title.lower()).strip("-")[:100] or "concept"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


async def create_roadmap(
    session: AsyncSession, *, goal: str, level: str, weekly_hours: int, review: bool
) -> Roadmap:
    roadmap = Roadmap(
        id=uuid.uuid4(),
        goal=goal,
        level=level,
        weekly_hours=weekly_hours,
        review_requested=review,
        status=RoadmapStatus.pending,
    )
    session.add(roadmap)
    await session.flush()
    return roadmap


async def get_roadmap(session: AsyncSession, roadmap_id: uuid.UUID) -> Roadmap | None:
    return await session.get(Roadmap, roadmap_id, populate_existing=True)


async def get_roadmap_tree(session: AsyncSession, roadmap_id: uuid.UUID) -> Roadmap | None:
    """The roadmap with stages → modules → concepts → content loaded (for the API)."""
    result = await session.execute(
        select(Roadmap)
        .where(Roadmap.id == roadmap_id)
        .options(
            selectinload(Roadmap.stages)
            .selectinload(Stage.modules)
            .selectinload(Module.concepts)
            .selectinload(Concept.content)
        )
    )
    return result.scalar_one_or_none()


async def list_roadmaps(
    session: AsyncSession,
    *,
    limit: int = 20,
    after: tuple[dt.datetime, uuid.UUID] | None = None,
    status: RoadmapStatus | None = None,
    search: str | None = None,
) -> Sequence[Roadmap]:
    """Roadmaps newest first (ties by id): those after the `(created_at, id)` keyset `after`, in
    `status`, whose goal or title contains `search` (case-insensitive, taken literally)."""
    statement = select(Roadmap).order_by(Roadmap.created_at.desc(), Roadmap.id.desc())
    if after is not None:
        # A keyset, not an offset: rows inserted meanwhile neither repeat nor hide a page.
        statement = statement.where(tuple_(Roadmap.created_at, Roadmap.id) < tuple_(*after))
    if status is not None:
        statement = statement.where(Roadmap.status == status)
    if search:
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", search) + "%"
        statement = statement.where(
            or_(Roadmap.goal.ilike(pattern, escape="\\"), Roadmap.title.ilike(pattern, escape="\\"))
        )
    result = await session.scalars(statement.limit(limit))
    return result.all()


async def update_roadmap(
    session: AsyncSession,
    roadmap_id: uuid.UUID,
    *,
    only_from: Iterable[RoadmapStatus] | None = None,
    owner: uuid.UUID | None = None,
    unleased: bool = False,
    untouched_since: ColumnElement[Any] | None = None,
    **values: Any,
) -> bool:
    """Set columns of one roadmap; with `only_from`, only if its status is one of those; with
    `owner`, only while that job token holds the lease; with `unleased`, only while no job holds
    an unexpired lease; with `untouched_since`, only if it was last updated before that time.

    Returns whether a row changed. The conditional form is how concurrent requests and
    re-delivered jobs agree on who moves a roadmap forward: exactly one of them sees True.
    """
    statement = update(Roadmap).where(Roadmap.id == roadmap_id)
    if only_from is not None:
        statement = statement.where(Roadmap.status.in_(list(only_from)))
    if owner is not None:
        statement = statement.where(Roadmap.lease_owner == owner)
    if unleased:
        statement = statement.where(
            or_(Roadmap.lease_owner.is_(None), Roadmap.lease_expires_at < func.now())
        )
    if untouched_since is not None:
        statement = statement.where(Roadmap.updated_at < untouched_since)
    result = await session.execute(statement.values(updated_at=func.now(), **values))
    return bool(getattr(result, "rowcount", 0))


async def delete_content(session: AsyncSession, roadmap_id: uuid.UUID, concept_id: int) -> bool:
    """Forget one concept's saved content (to have it written again); whether the concept is
    one of the roadmap's (with or without content)."""
    exists = await session.scalar(
        select(func.count()).where(Concept.id == concept_id, Concept.roadmap_id == roadmap_id)
    )
    if not exists:
        return False
    await session.execute(delete(ConceptContent).where(ConceptContent.concept_id == concept_id))
    return True


async def delete_roadmap(
    session: AsyncSession, roadmap_id: uuid.UUID, *, only_from: Iterable[RoadmapStatus]
) -> bool:
    """Delete one roadmap (its curriculum, content and logs cascade) if its status is one of
    `only_from` and no job holds an unexpired lease on it; whether it was deleted."""
    result = await session.execute(
        delete(Roadmap).where(
            Roadmap.id == roadmap_id,
            Roadmap.status.in_(list(only_from)),
            or_(Roadmap.lease_owner.is_(None), Roadmap.lease_expires_at < func.now()),
        )
    )
    return bool(getattr(result, "rowcount", 0))


def lease_until(seconds: float) -> ColumnElement[Any]:
    """`now() + seconds` in the database's clock, the only clock every process shares."""
    return func.now() + dt.timedelta(seconds=seconds)


async def lease_holder(session: AsyncSession, roadmap_id: uuid.UUID) -> dt.datetime | None:
    """When the running job's lease expires, or None when no job holds an unexpired one."""
    expires: dt.datetime | None = await session.scalar(
        select(Roadmap.lease_expires_at).where(
            Roadmap.id == roadmap_id,
            Roadmap.lease_owner.is_not(None),
            Roadmap.lease_expires_at >= func.now(),
        )
    )
    return expires


def _abandoned(statuses: Iterable[RoadmapStatus], stale: ColumnElement[Any]) -> ColumnElement[bool]:
    """In flight, but its job's lease expired, or no job took it since `stale`."""
    return and_(
        Roadmap.status.in_(list(statuses)),
        or_(
            and_(Roadmap.lease_owner.is_not(None), Roadmap.lease_expires_at < func.now()),
            and_(Roadmap.lease_owner.is_(None), Roadmap.updated_at < stale),
        ),
    )


async def abandoned_roadmaps(
    session: AsyncSession, statuses: Iterable[RoadmapStatus], stale: ColumnElement[Any]
) -> list[uuid.UUID]:
    """Roadmaps in one of `statuses` that no live job works on (see `take_abandoned`)."""
    result = await session.scalars(select(Roadmap.id).where(_abandoned(statuses, stale)))
    return list(result.all())


async def take_abandoned(
    session: AsyncSession,
    roadmap_id: uuid.UUID,
    statuses: Iterable[RoadmapStatus],
    stale: ColumnElement[Any],
) -> Roadmap | None:
    """Clear an abandoned roadmap's dead lease and mark it touched, if it is still abandoned;
    the roadmap, or None when another sweeper (or its revived job) got there first."""
    result = await session.scalars(
        update(Roadmap)
        .where(Roadmap.id == roadmap_id, _abandoned(statuses, stale))
        .values(lease_owner=None, lease_expires_at=None, updated_at=func.now())
        .returning(Roadmap),
        execution_options={"populate_existing": True},
    )
    return result.one_or_none()


async def replace_curriculum(
    session: AsyncSession,
    roadmap_id: uuid.UUID,
    stages: Sequence[Mapping[str, Any]],
    *,
    discard_content: bool = False,
) -> int:
    """Replace the roadmap's stages/modules/concepts with `stages` (nested dicts); return the
    number of concepts.

    Saved content would go with the replaced concepts, so a roadmap that has any is refused with
    `ContentExistsError` unless `discard_content=True` says the redesign is meant to drop it.
    """
    if not discard_content:
        saved = await session.scalar(
            select(func.count()).where(ConceptContent.roadmap_id == roadmap_id)
        )
        if saved:
            raise ContentExistsError(
                f"roadmap {roadmap_id} already has content for {saved} concepts; replacing its "
                "curriculum would delete it (pass discard_content=True to redesign on purpose)"
            )
    await session.execute(delete(Stage).where(Stage.roadmap_id == roadmap_id))
    taken: set[str] = set()
    count = 0
    for stage_pos, stage_plan in enumerate(stages, start=1):
        stage = Stage(
            roadmap_id=roadmap_id,
            position=stage_pos,
            title=stage_plan["title"],
            description=stage_plan.get("description", ""),
        )
        for module_pos, module_plan in enumerate(stage_plan["modules"], start=1):
            module = Module(
                position=module_pos,
                title=module_plan["title"],
                description=module_plan.get("description", ""),
            )
            for concept_pos, concept_plan in enumerate(module_plan["concepts"], start=1):
                slug = slugify(concept_plan["title"], taken)
                taken.add(slug)
                module.concepts.append(
                    Concept(
                        roadmap_id=roadmap_id,
                        stage_position=stage_pos,
                        position=concept_pos,
                        slug=slug,
                        title=concept_plan["title"],
                        summary=concept_plan.get("summary", ""),
                        estimated_hours=float(concept_plan.get("estimated_hours", 1.0)),
                    )
                )
                count += 1
            stage.modules.append(module)
        session.add(stage)
    await session.flush()
    return count


async def record_curriculum_version(
    session: AsyncSession,
    roadmap_id: uuid.UUID,
    version: int,
    *,
    title: str,
    summary: str,
    feedback: str | None,
    stages: Sequence[Mapping[str, Any]],
    concepts: int,
) -> None:
    """Keep a designed curriculum as `version`, with the feedback that asked for it.

    A version already recorded is left as it was: only the job that designed it writes it.
    """
    await session.execute(
        insert(CurriculumVersion)
        .values(
            roadmap_id=roadmap_id,
            version=version,
            title=title,
            summary=summary,
            feedback=feedback,
            stages=list(stages),
            concepts=concepts,
        )
        .on_conflict_do_nothing(index_elements=["roadmap_id", "version"])
    )


async def list_curriculum_versions(
    session: AsyncSession, roadmap_id: uuid.UUID
) -> list[CurriculumVersion]:
    """The roadmap's curriculum versions, oldest first."""
    result = await session.scalars(
        select(CurriculumVersion)
        .where(CurriculumVersion.roadmap_id == roadmap_id)
        .order_by(CurriculumVersion.version)
    )
    return list(result)


async def concepts_without_content(
    session: AsyncSession, roadmap_id: uuid.UUID
) -> list[ConceptRef]:
    """Concepts whose content is not saved yet, in curriculum order: the resume checkpoint."""
    result = await session.execute(
        select(Concept, Module.title)
        .join(Module, Concept.module_id == Module.id)
        .join(Stage, Module.stage_id == Stage.id)
        .outerjoin(ConceptContent, ConceptContent.concept_id == Concept.id)
        .where(Concept.roadmap_id == roadmap_id, ConceptContent.concept_id.is_(None))
        .order_by(Stage.position, Module.position, Concept.position)
    )
    return [
        ConceptRef(
            id=concept.id,
            slug=concept.slug,
            title=concept.title,
            summary=concept.summary,
            stage_position=concept.stage_position,
            module_title=module_title,
        )
        for concept, module_title in result
    ]


async def save_content(
    session: AsyncSession, roadmap_id: uuid.UUID, batch: Sequence[NewContent]
) -> set[int]:
    """Insert a batch of concept content in one statement; return the concept ids inserted now.

    A concept that already has content (saved by an earlier, interrupted run) is skipped by the
    primary key conflict rather than duplicated, so a re-run can never double-count.
    """
    if not batch:
        return set()
    statement = (
        insert(ConceptContent)
        .values(
            [
                {
                    "concept_id": item.concept_id,
                    "roadmap_id": roadmap_id,
                    "tutorial": item.tutorial,
                    "resources": item.resources,
                    "quiz": item.quiz,
                }
                for item in batch
            ]
        )
        .on_conflict_do_nothing(index_elements=[ConceptContent.concept_id])
        .returning(ConceptContent.concept_id)
    )
    result = await session.scalars(statement)
    return set(result.all())


async def progress(session: AsyncSession, roadmap_id: uuid.UUID) -> Progress:
    result = await session.execute(
        select(
            Concept.stage_position,
            func.count(Concept.id),
            func.count(ConceptContent.concept_id),
        )
        .outerjoin(ConceptContent, ConceptContent.concept_id == Concept.id)
        .where(Concept.roadmap_id == roadmap_id)
        .group_by(Concept.stage_position)
    )
    report = Progress()
    for stage_position, total, done in result:
        report.stage_total[stage_position] = total
        report.stage_done[stage_position] = done
        report.total += total
        report.done += done
    return report


async def add_execution_log(
    session: AsyncSession,
    *,
    roadmap_id: uuid.UUID,
    step: str,
    status: str,
    duration_ms: int | None = None,
    worker: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    # The roadmap may have been deleted while the log was queued; a log never needs to fail.
    exists = await session.scalar(select(func.count()).where(Roadmap.id == roadmap_id))
    if not exists:
        return
    session.add(
        ExecutionLog(
            roadmap_id=roadmap_id,
            step=step,
            status=status,
            duration_ms=duration_ms,
            worker=worker,
            detail=dict(detail or {}),
        )
    )
    await session.flush()


async def list_execution_logs(
    session: AsyncSession, roadmap_id: uuid.UUID
) -> Sequence[ExecutionLog]:
    result = await session.scalars(
        select(ExecutionLog).where(ExecutionLog.roadmap_id == roadmap_id).order_by(ExecutionLog.id)
    )
    return result.all()


# Used by list views: how many concepts each roadmap has and how many are done, in one query.
async def progress_by_roadmap(
    session: AsyncSession, roadmap_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, int]]:
    if not roadmap_ids:
        return {}
    result = await session.execute(
        select(
            Concept.roadmap_id,
            func.count(Concept.id),
            func.sum(case((ConceptContent.concept_id.is_not(None), 1), else_=0)),
        )
        .outerjoin(ConceptContent, ConceptContent.concept_id == Concept.id)
        .where(Concept.roadmap_id.in_(roadmap_ids))
        .group_by(Concept.roadmap_id)
    )
    return {rid: (int(done or 0), int(total)) for rid, total, done in result}
