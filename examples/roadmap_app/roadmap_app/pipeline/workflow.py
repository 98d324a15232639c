"""The workflow: status transitions around each pipeline step, failures recorded before notified."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func

from loopsafe.db import Database
from roadmap_app import repositories
from roadmap_app.config import Settings
from roadmap_app.llm import LLMProvider
from roadmap_app.models import RoadmapStatus
from roadmap_app.pipeline.calls import Brief, LLMOptions
from roadmap_app.pipeline.content import Notifier, generate_missing_content
from roadmap_app.pipeline.curriculum import design_curriculum
from roadmap_app.pipeline.intent import Intent, analyze_intent

__all__ = (
    "Runtime",
    "fail",
    "generate_content",
    "generate_roadmap",
    "resume_after_review",
)

Enqueue = Callable[..., Awaitable[None]]
LogStep = Callable[..., Awaitable[None]]

S = RoadmapStatus
_T = TypeVar("_T")
log = logging.getLogger("roadmap_app.workflow")
_RESTARTABLE = frozenset({S.pending, S.analyzing, S.designing, S.failed})
_NOT_COMPLETED = frozenset(set(S) - {S.completed})


@dataclass
class Runtime:
    """What the workflow needs from the process it runs in (a Celery worker, a test)."""

    db: Database
    llm: LLMProvider
    settings: Settings
    events: Notifier
    # `enqueue(job, roadmap_id, *args)` hands the next step to a worker; raises if it cannot.
    enqueue: Enqueue
    # `log_step(roadmap_id, step, status, duration_ms=…, detail=…)`; never raises.
    log_step: LogStep

    @property
    def options(self) -> LLMOptions:
        s = self.settings
        return LLMOptions(
            retries=s.llm_retries, timeout_s=s.llm_timeout_s, concurrency=s.llm_concurrency
        )


class _Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def ms(self) -> int:
        return int((time.perf_counter() - self.start) * 1000)


async def _set(
    rt: Runtime, roadmap_id: uuid.UUID, only_from: frozenset[S] | None, **values: Any
) -> bool:
    async with rt.db.session() as session:
        changed = await repositories.update_roadmap(
            session, roadmap_id, only_from=only_from, **values
        )
    status = values.get("status")
    if changed and status is not None:
        await rt.events.emit(roadmap_id, "status", status=status.value, error=values.get("error"))
    return changed


async def _current_status(rt: Runtime, roadmap_id: uuid.UUID) -> S | None:
    async with rt.db.session() as session:
        roadmap = await repositories.get_roadmap(session, roadmap_id)
        return None if roadmap is None else roadmap.status


async def fail(
    rt: Runtime, roadmap_id: uuid.UUID, step: str, reason: str, duration_ms: int | None = None
) -> None:
    """Record a failure: state first (`failed` + reason in the database), notifications second.

    If the state cannot be written the error propagates (the job must not look successful);
    the notifications after it never raise.
    """
    reason = reason[:2000]
    log.warning("roadmap %s failed during %s: %s", roadmap_id, step, reason)
    async with rt.db.session() as session:
        # A completed roadmap stays completed: a duplicate job failing late changes nothing.
        await repositories.update_roadmap(
            session, roadmap_id, only_from=_NOT_COMPLETED, status=S.failed, error=reason
        )
    # Each notification on its own: a broken event channel must not also lose the log.
    with contextlib.suppress(Exception):
        await rt.events.emit(roadmap_id, "status", status=S.failed.value, error=reason, step=step)
    with contextlib.suppress(Exception):
        await rt.log_step(
            roadmap_id, step, "failed", duration_ms=duration_ms, detail={"error": reason}
        )


def _reason(step: str, exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return f"{step}: interrupted (time limit or worker shutdown); POST /resume to continue"
    return f"{step}: {exc}" if str(exc) else f"{step}: {type(exc).__name__}"


async def _or_fail(
    rt: Runtime, roadmap_id: uuid.UUID, step: str, timer: _Timer, work: Awaitable[_T]
) -> _T | None:
    """`work`'s result, or None once its failure is recorded on the roadmap.

    A cancellation (time limit, worker shutdown) is recorded too, then re-raised so the worker
    still sees it.
    """
    try:
        return await work
    except BaseException as exc:
        await fail(rt, roadmap_id, step, _reason(step, exc), timer.ms)
        if isinstance(exc, Exception):
            return None
        raise


async def _design(rt: Runtime, roadmap_id: uuid.UUID, *, feedback: str | None) -> S:
    """Intent (if not known yet) and curriculum; ends in review or content generation."""
    timer = _Timer()
    async with rt.db.session() as session:
        roadmap = await repositories.get_roadmap(session, roadmap_id)
        if roadmap is None:
            raise LookupError(f"roadmap {roadmap_id} does not exist")
        brief = Brief(roadmap.goal, roadmap.level, roadmap.weekly_hours)
        known_intent = roadmap.intent
        version = roadmap.curriculum_version + 1
        review = roadmap.review_requested
    if known_intent is None:
        intent = await analyze_intent(rt.llm, brief, rt.options)
        async with rt.db.session() as session:
            await repositories.update_roadmap(session, roadmap_id, intent=intent.model_dump())
        await rt.log_step(
            roadmap_id,
            "intent",
            "succeeded",
            duration_ms=timer.ms,
            detail={"subject": intent.subject},
        )
        timer = _Timer()
    else:
        intent = Intent.model_validate(known_intent)
    await _set(rt, roadmap_id, None, status=S.designing)
    curriculum = await design_curriculum(
        rt.llm, brief, intent, rt.options, version=version, feedback=feedback
    )

    next_status = S.human_review_pending if review else S.generating_content
    async with rt.db.session() as session:
        total = await repositories.replace_curriculum(session, roadmap_id, curriculum.as_rows())
        await repositories.update_roadmap(
            session,
            roadmap_id,
            title=curriculum.title,
            summary=curriculum.summary,
            curriculum_version=version,
            curriculum_ready=not review,
            status=next_status,
        )
    await rt.events.emit(
        roadmap_id,
        "curriculum",
        version=version,
        total=total,
        stages=[
            {"position": i, "title": s.title, "total": sum(len(m.concepts) for m in s.modules)}
            for i, s in enumerate(curriculum.stages, start=1)
        ],
    )
    await rt.events.emit(roadmap_id, "status", status=next_status.value, error=None)
    await rt.log_step(
        roadmap_id,
        "curriculum",
        "succeeded",
        duration_ms=timer.ms,
        detail={"version": version, "concepts": total, "feedback": feedback},
    )
    if not review:
        await rt.enqueue("generate_content", roadmap_id)
    return next_status


async def generate_roadmap(rt: Runtime, roadmap_id: uuid.UUID) -> S | None:
    """Job `generate_roadmap`: intent → curriculum → review or content. Returns the new status
    (None when another run owns the roadmap or it no longer needs this step)."""
    timer = _Timer()
    if not await _set(rt, roadmap_id, _RESTARTABLE, status=S.analyzing, error=None):
        await rt.log_step(
            roadmap_id,
            "generate_roadmap",
            "skipped",
            detail={"status": str(await _current_status(rt, roadmap_id))},
        )
        return None
    designed = await _or_fail(
        rt, roadmap_id, "curriculum", timer, _design(rt, roadmap_id, feedback=None)
    )
    return S.failed if designed is None else designed


async def resume_after_review(
    rt: Runtime, roadmap_id: uuid.UUID, approve: bool, feedback: str | None
) -> S | None:
    """Job `resume_after_review`: approved → content generation; rejected → a new curriculum
    shaped by `feedback`, back to review."""
    timer = _Timer()
    await rt.log_step(
        roadmap_id, "review", "approved" if approve else "rejected", detail={"feedback": feedback}
    )
    if approve:
        if not await _set(
            rt,
            roadmap_id,
            frozenset({S.review_submitted}),
            status=S.generating_content,
            curriculum_ready=True,
        ):
            return None
        try:
            await rt.enqueue("generate_content", roadmap_id)
        except Exception as exc:
            await fail(rt, roadmap_id, "review", _reason("queueing content generation", exc))
            return S.failed
        return S.generating_content
    if not await _set(rt, roadmap_id, frozenset({S.review_submitted}), status=S.designing):
        return None
    designed = await _or_fail(
        rt, roadmap_id, "curriculum", timer, _design(rt, roadmap_id, feedback=feedback)
    )
    return S.failed if designed is None else designed


async def generate_content(
    rt: Runtime, roadmap_id: uuid.UUID, *, step: str = "content"
) -> S | None:
    """Jobs `generate_content` and `resume_from_checkpoint`: content for every concept that has
    none yet, then `completed`."""
    timer = _Timer()
    claimable = frozenset({S.generating_content, S.failed})
    async with rt.db.session() as session:
        roadmap = await repositories.get_roadmap(session, roadmap_id)
        ready = roadmap is not None and roadmap.curriculum_ready
        claimed = ready and await repositories.update_roadmap(
            session, roadmap_id, only_from=claimable, status=S.generating_content, error=None
        )
    if not claimed:
        status = None if roadmap is None else roadmap.status
        await rt.log_step(roadmap_id, step, "skipped", detail={"status": str(status)})
        return None
    if roadmap is not None and roadmap.status is not S.generating_content:
        await rt.events.emit(roadmap_id, "status", status=S.generating_content.value, error=None)
    report = await _or_fail(
        rt,
        roadmap_id,
        step,
        timer,
        generate_missing_content(
            rt.db,
            rt.llm,
            roadmap_id,
            rt.options,
            rt.events,
            batch_size=rt.settings.content_batch_size,
            hold_connections=rt.settings.content_db_semaphore
            if rt.settings.content_write_mode == "per-concept"
            else None,
        ),
    )
    if report is None:
        return S.failed
    async with rt.db.session() as session:
        await repositories.update_roadmap(
            session,
            roadmap_id,
            only_from=frozenset({S.generating_content}),
            status=S.completed,
            error=None,
            completed_at=func.now(),
        )
    detail: Mapping[str, Any] = {
        "generated": report.generated,
        "skipped": report.skipped,
        "concepts": report.progress.total,
    }
    await rt.events.emit(
        roadmap_id,
        "status",
        status=S.completed.value,
        error=None,
        done=report.progress.done,
        total=report.progress.total,
    )
    await rt.log_step(roadmap_id, step, "succeeded", duration_ms=timer.ms, detail=dict(detail))
    return S.completed
