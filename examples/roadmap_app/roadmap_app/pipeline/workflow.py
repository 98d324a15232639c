"""The workflow: status transitions around each pipeline step, failures recorded before notified."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from loopsafe.db import Database
from roadmap_app import repositories
from roadmap_app.config import Settings
from roadmap_app.llm import LLMProvider
from roadmap_app.models import Roadmap, RoadmapStatus
from roadmap_app.pipeline.calls import Brief, LLMOptions
from roadmap_app.pipeline.content import ContentReport, Notifier, generate_missing_content
from roadmap_app.pipeline.curriculum import design_curriculum
from roadmap_app.pipeline.intent import Intent, analyze_intent

__all__ = (
    "JobCancelled",
    "LeaseLost",
    "Runtime",
    "fail",
    "generate_content",
    "generate_roadmap",
    "recover_abandoned",
    "resume_after_review",
)

Enqueue = Callable[..., Awaitable[None]]
LogStep = Callable[..., Awaitable[None]]

S = RoadmapStatus
_T = TypeVar("_T")
log = logging.getLogger("roadmap_app.workflow")
_RESTARTABLE = frozenset({S.pending, S.analyzing, S.designing, S.failed})
# A failure is recorded over any status but these: a duplicate job failing late, or a job
# interrupted by its user's cancel, must not turn the roadmap `failed`.
_FAILABLE = frozenset(set(S) - {S.completed, S.cancelled})
# A job writes (as lease holder) over any status but `cancelled`: once its user cancelled it, the
# job may save the content it already generated but never move the roadmap on.
_NOT_CANCELLED = frozenset(set(S) - {S.cancelled})
# How often a running job reads whether its user cancelled it: one primary-key read per job.
CANCEL_POLL_S = 1.0
# Statuses in which some job should be working on the roadmap (or be queued to).
_IN_FLIGHT = frozenset(
    {S.pending, S.analyzing, S.designing, S.review_submitted, S.generating_content}
)
# Marking a job failed: attempts of its own short transaction, and the pause before each retry.
_FAIL_WRITE_BACKOFF_S = (0.0, 0.2, 1.0)


class LeaseLost(RuntimeError):
    """This job no longer owns its roadmap: its lease expired and another job took over."""

    def __init__(self, roadmap_id: uuid.UUID, token: uuid.UUID) -> None:
        super().__init__(f"roadmap {roadmap_id}: job {token} lost its lease to another job")


class JobCancelled(Exception):
    """The roadmap's user cancelled it while this job ran: the job stops and changes no status."""

    def __init__(self, roadmap_id: uuid.UUID) -> None:
        super().__init__(f"roadmap {roadmap_id} was cancelled by its user")


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


async def _claim(
    rt: Runtime, roadmap_id: uuid.UUID, only_from: frozenset[S], **values: Any
) -> uuid.UUID | None:
    """Take the roadmap's lease for a new job (if no live job holds it); the job's token."""
    token = uuid.uuid4()
    async with rt.db.session() as session:
        claimed = await repositories.update_roadmap(
            session,
            roadmap_id,
            only_from=only_from,
            unleased=True,
            lease_owner=token,
            lease_expires_at=repositories.lease_until(rt.settings.job_lease_s),
            **values,
        )
    return token if claimed else None


async def _write_owned(
    session: AsyncSession,
    rt: Runtime,
    roadmap_id: uuid.UUID,
    token: uuid.UUID,
    *,
    release: bool = False,
    even_cancelled: bool = False,
    **values: Any,
) -> None:
    """Write as the lease holder, extending the lease (or giving it up with `release`).

    Raises `JobCancelled` once the roadmap is `cancelled` (unless `even_cancelled`: saving
    content generated before the cancel), `LeaseLost` when another job holds the lease.
    """
    lease: dict[str, Any] = (
        {"lease_owner": None, "lease_expires_at": None}
        if release
        else {"lease_expires_at": repositories.lease_until(rt.settings.job_lease_s)}
    )
    only_from = None if even_cancelled else _NOT_CANCELLED
    if not await repositories.update_roadmap(
        session, roadmap_id, only_from=only_from, owner=token, **lease, **values
    ):
        current = await repositories.get_roadmap(session, roadmap_id)
        if current is not None and current.status is S.cancelled:
            raise JobCancelled(roadmap_id)
        raise LeaseLost(roadmap_id, token)


async def _advance(rt: Runtime, roadmap_id: uuid.UUID, token: uuid.UUID, **values: Any) -> None:
    """Commit `values` as the lease holder, then announce the new status."""
    async with rt.db.session() as session:
        await _write_owned(session, rt, roadmap_id, token, **values)
    status = values.get("status")
    if status is not None:
        await rt.events.emit(roadmap_id, "status", status=status.value, error=values.get("error"))


@contextlib.asynccontextmanager
async def _heartbeat(rt: Runtime, roadmap_id: uuid.UUID, token: uuid.UUID) -> AsyncIterator[None]:
    """Keep the lease alive while the job runs (between its own writes, which extend it too)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(rt.settings.job_lease_s / 3)
            try:
                await _advance(rt, roadmap_id, token)
            except JobCancelled:
                return  # `_unless_cancelled` stops the job; the lease is released as it ends
            except LeaseLost:
                log.warning(
                    "roadmap %s: job %s lost its lease; its writes will fail", roadmap_id, token
                )
                return
            except Exception as exc:  # the database is away for a moment: beat again later
                log.warning("roadmap %s: lease heartbeat failed (%s)", roadmap_id, exc)

    beating = asyncio.create_task(beat(), name=f"lease-heartbeat-{roadmap_id}")
    try:
        yield
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)


async def _unless_cancelled(rt: Runtime, roadmap_id: uuid.UUID, work: Awaitable[_T]) -> _T:
    """`work`'s result, unless the roadmap's user cancels it first: then `work` is cancelled (its
    LLM calls with it; content generation saves what it had finished) and `JobCancelled` raised.

    The job reads its status every `CANCEL_POLL_S` rather than waiting for its next write: a
    content job writes only when a concept is done, and a cancel should not wait for a concept.
    """
    job = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            try:
                roadmap = await _current(rt, roadmap_id)
            except Exception as exc:  # the database is away for a moment: look again later
                log.warning("roadmap %s: cancel check failed (%s)", roadmap_id, exc)
                continue
            if roadmap is not None and roadmap.status is S.cancelled:
                return

    watcher = asyncio.create_task(watch(), name=f"cancel-watch-{roadmap_id}")
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Cancelled from outside (time limit, shutdown), or the user cancelled: stop both, and
        # wait for the job's own clean-up (its last content batch) before going on.
        watcher.cancel()
        cancelled_by_user = not job.done()
        job.cancel()
        await asyncio.gather(watcher, job, return_exceptions=True)
    if cancelled_by_user and watcher.done() and not watcher.cancelled():
        raise JobCancelled(roadmap_id)
    return job.result()


async def _stopped(rt: Runtime, roadmap_id: uuid.UUID, token: uuid.UUID, task: str) -> None:
    """A job its user cancelled: give up the lease (nothing else changes) and log it."""
    try:
        async with rt.db.session() as session:
            await repositories.update_roadmap(
                session, roadmap_id, owner=token, lease_owner=None, lease_expires_at=None
            )
            saved = await repositories.progress(session, roadmap_id)
    except Exception as exc:  # the lease then lapses on its own; the roadmap stays cancelled
        log.warning("roadmap %s: lease not released after cancel (%s)", roadmap_id, exc)
        return
    log.info("roadmap %s: %s stopped, cancelled by its user", roadmap_id, task)
    await rt.log_step(
        roadmap_id, task, "cancelled", detail={"saved": saved.done, "concepts": saved.total}
    )


async def _current(rt: Runtime, roadmap_id: uuid.UUID) -> Roadmap | None:
    async with rt.db.session() as session:
        return await repositories.get_roadmap(session, roadmap_id)


async def _skipped(rt: Runtime, roadmap_id: uuid.UUID, task: str, why: str) -> None:
    """A job that found nothing to do, or another job owning the roadmap: a logged no-op."""
    roadmap = await _current(rt, roadmap_id)
    status = None if roadmap is None else roadmap.status.value
    log.info("roadmap %s: %s skipped (%s; status %s)", roadmap_id, task, why, status)
    await rt.log_step(roadmap_id, task, "skipped", detail={"status": str(status), "why": why})


async def _write_failed(
    rt: Runtime, roadmap_id: uuid.UUID, reason: str, owner: uuid.UUID | None, **values: Any
) -> bool:
    """`failed` + reason in one short transaction of its own, retried; whether it was written."""
    for pause in _FAIL_WRITE_BACKOFF_S[:-1]:
        await asyncio.sleep(pause)
        with contextlib.suppress(Exception):
            return await _update_failed(rt, roadmap_id, reason, owner, **values)
    await asyncio.sleep(_FAIL_WRITE_BACKOFF_S[-1])
    return await _update_failed(rt, roadmap_id, reason, owner, **values)


async def _update_failed(
    rt: Runtime, roadmap_id: uuid.UUID, reason: str, owner: uuid.UUID | None, **values: Any
) -> bool:
    async with rt.db.session() as session:
        # Without an owner (no job ran), only a roadmap no live job holds; a completed roadmap
        # stays completed either way: a duplicate job failing late changes nothing.
        return await repositories.update_roadmap(
            session,
            roadmap_id,
            only_from=_FAILABLE,
            owner=owner,
            unleased=owner is None,
            status=S.failed,
            error=reason,
            lease_owner=None,
            lease_expires_at=None,
            **values,
        )


async def fail(
    rt: Runtime,
    roadmap_id: uuid.UUID,
    step: str,
    reason: str,
    duration_ms: int | None = None,
    *,
    owner: uuid.UUID | None = None,
    **values: Any,
) -> bool:
    """Record a failure: state first (`failed` + reason in the database), notifications second.

    The state is written in its own short transaction, retried; whether it was written is
    returned. The notifications are attempted even when that write failed (the listeners should
    hear of the failure), but not when another job owns the roadmap; they never raise.
    """
    reason = reason[:2000]
    log.warning("roadmap %s failed during %s: %s", roadmap_id, step, reason)
    try:
        recorded = await _write_failed(rt, roadmap_id, reason, owner, **values)
    except Exception as write_error:
        recorded = False
        log.error(
            "roadmap_app.failure_not_recorded task=%s roadmap=%s error=%r write_error=%r",
            step, roadmap_id, reason, write_error,
            extra={"task": step, "roadmap": str(roadmap_id), "error": reason,
                   "write_error": repr(write_error)},
        )  # fmt: skip
    else:
        if not recorded:
            log.info(
                "roadmap %s: failure of %s not recorded: not this job's roadmap", roadmap_id, step
            )
            return False
    # Each notification on its own: a broken event channel must not also lose the log.
    with contextlib.suppress(Exception):
        await rt.events.emit(roadmap_id, "status", status=S.failed.value, error=reason, step=step)
    with contextlib.suppress(Exception):
        await rt.log_step(
            roadmap_id, step, "failed", duration_ms=duration_ms, detail={"error": reason}
        )
    return recorded


def _reason(step: str, exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return f"{step}: interrupted (time limit or worker shutdown); POST /resume to continue"
    return f"{step}: {exc}" if str(exc) else f"{step}: {type(exc).__name__}"


@dataclass
class _Step:
    """The step a job is in, for its failure reason: one job runs intent, then curriculum."""

    name: str


async def _or_fail(
    rt: Runtime,
    roadmap_id: uuid.UUID,
    step: str | _Step,
    timer: _Timer,
    token: uuid.UUID,
    work: Awaitable[_T],
) -> _T | None:
    """`work`'s result, or None once its failure is recorded on the roadmap.

    The original error is raised instead when the failure could not be recorded (the job must
    not look handled), and a cancellation (time limit, worker shutdown) is recorded, then
    re-raised so the worker still sees it. `LeaseLost` and `JobCancelled` pass through.
    """
    try:
        return await work
    except (LeaseLost, JobCancelled):
        raise
    except BaseException as exc:
        # Read when it failed: an unreachable LLM during intent analysis is an `intent` failure.
        name = step.name if isinstance(step, _Step) else step
        recorded = await fail(rt, roadmap_id, name, _reason(name, exc), timer.ms, owner=token)
        if isinstance(exc, Exception) and recorded:
            return None
        raise


async def _queue_next(rt: Runtime, roadmap_id: uuid.UUID, job: str, step: str) -> None:
    """Hand the next job to a worker; without a broker, leave it to the sweeper.

    The roadmap is committed in flight and released (no lease) before this is called, so once it
    has gone a lease period untouched, the sweeper re-queues it from the checkpoint: a Redis
    restart during curriculum design used to end the roadmap `failed`, waiting for a human to
    press resume (issue 13's fault suite).
    """
    try:
        await rt.enqueue(job, roadmap_id)
    except Exception as exc:
        reason = _reason(step, exc)
        log.warning(
            "roadmap %s: could not queue %s (%s); the sweeper re-queues it once the broker is back",
            roadmap_id, job, reason,
        )  # fmt: skip
        await rt.log_step(roadmap_id, step, "queue_deferred", detail={"job": job, "error": reason})


async def _design(
    rt: Runtime, roadmap_id: uuid.UUID, token: uuid.UUID, *, feedback: str | None, step: _Step
) -> S:
    """Intent (if not known yet) and curriculum; ends in review or content generation."""
    timer = _Timer()
    roadmap = await _current(rt, roadmap_id)
    if roadmap is None:
        raise LookupError(f"roadmap {roadmap_id} does not exist")
    brief = Brief(roadmap.goal, roadmap.level, roadmap.weekly_hours)
    known_intent = roadmap.intent
    version = roadmap.curriculum_version + 1
    review = roadmap.review_requested
    if known_intent is None:
        step.name = "intent"
        intent = await analyze_intent(rt.llm, brief, rt.options)
        await _advance(rt, roadmap_id, token, intent=intent.model_dump())
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
    step.name = "curriculum"
    await _advance(rt, roadmap_id, token, status=S.designing)
    curriculum = await design_curriculum(
        rt.llm, brief, intent, rt.options, version=version, feedback=feedback
    )

    next_status = S.human_review_pending if review else S.generating_content
    async with rt.db.session() as session:
        # Fenced: the curriculum is only replaced by the job that still owns the roadmap.
        await _write_owned(
            session,
            rt,
            roadmap_id,
            token,
            release=True,
            title=curriculum.title,
            summary=curriculum.summary,
            curriculum_version=version,
            curriculum_ready=not review,
            status=next_status,
        )
        stages = curriculum.as_rows()
        total = await repositories.replace_curriculum(session, roadmap_id, stages)
        # The replaced version stays readable: every design is kept with what asked for it.
        await repositories.record_curriculum_version(
            session,
            roadmap_id,
            version,
            title=curriculum.title,
            summary=curriculum.summary,
            feedback=feedback,
            stages=stages,
            concepts=total,
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
        await _queue_next(rt, roadmap_id, "generate_content", "curriculum")
    return next_status


async def _designed(
    rt: Runtime, roadmap_id: uuid.UUID, token: uuid.UUID, task: str, feedback: str | None
) -> S | None:
    timer = _Timer()
    step = _Step("curriculum")
    try:
        async with _heartbeat(rt, roadmap_id, token):
            designed = await _or_fail(
                rt,
                roadmap_id,
                step,
                timer,
                token,
                _unless_cancelled(
                    rt, roadmap_id, _design(rt, roadmap_id, token, feedback=feedback, step=step)
                ),
            )
    except LeaseLost as exc:
        await _skipped(rt, roadmap_id, task, str(exc))
        return None
    except JobCancelled:
        await _stopped(rt, roadmap_id, token, task)
        return S.cancelled
    return S.failed if designed is None else designed


async def generate_roadmap(rt: Runtime, roadmap_id: uuid.UUID) -> S | None:
    """Job `generate_roadmap`: intent → curriculum → review or content. Returns the new status
    (None when another job owns the roadmap or it no longer needs this step)."""
    roadmap = await _current(rt, roadmap_id)
    if roadmap is not None and roadmap.curriculum_ready:
        # Past design: a re-delivered job must not redesign (and so drop saved content).
        await _skipped(rt, roadmap_id, "generate_roadmap", "the curriculum is final")
        return None
    token = await _claim(rt, roadmap_id, _RESTARTABLE, status=S.analyzing, error=None)
    if token is None:
        await _skipped(
            rt, roadmap_id, "generate_roadmap", "owned by another job or not restartable"
        )
        return None
    await rt.events.emit(roadmap_id, "status", status=S.analyzing.value, error=None)
    return await _designed(rt, roadmap_id, token, "generate_roadmap", None)


async def resume_after_review(
    rt: Runtime, roadmap_id: uuid.UUID, approve: bool, feedback: str | None
) -> S | None:
    """Job `resume_after_review`: approved → content generation; rejected → a new curriculum
    shaped by `feedback`, back to review."""
    await rt.log_step(
        roadmap_id, "review", "approved" if approve else "rejected", detail={"feedback": feedback}
    )
    submitted = frozenset({S.review_submitted})
    if approve:
        async with rt.db.session() as session:
            moved = await repositories.update_roadmap(
                session,
                roadmap_id,
                only_from=submitted,
                unleased=True,
                status=S.generating_content,
                curriculum_ready=True,
            )
        if not moved:
            await _skipped(rt, roadmap_id, "resume_after_review", "not waiting for this review")
            return None
        await rt.events.emit(roadmap_id, "status", status=S.generating_content.value, error=None)
        await _queue_next(rt, roadmap_id, "generate_content", "review")
        return S.generating_content
    token = await _claim(rt, roadmap_id, submitted, status=S.designing)
    if token is None:
        await _skipped(rt, roadmap_id, "resume_after_review", "not waiting for this review")
        return None
    await rt.events.emit(roadmap_id, "status", status=S.designing.value, error=None)
    return await _designed(rt, roadmap_id, token, "resume_after_review", feedback)


def _failed_concepts_reason(step: str, report: ContentReport) -> str:
    slugs = ", ".join(f.concept.slug for f in report.failed)
    return (
        f"{step}: {len(report.failed)} of {report.progress.total} concepts failed ({slugs}); "
        f"first reason: {report.failed[0].reason}; POST /resume retries only these"
    )


async def generate_content(
    rt: Runtime, roadmap_id: uuid.UUID, *, step: str = "content"
) -> S | None:
    """Jobs `generate_content` and `resume_from_checkpoint`: content for every concept that has
    none yet, then `completed` — or `failed` listing the concepts that failed for good."""
    timer = _Timer()
    roadmap = await _current(rt, roadmap_id)
    if roadmap is None or not roadmap.curriculum_ready:
        await _skipped(rt, roadmap_id, step, "no final curriculum")
        return None
    token = await _claim(
        rt,
        roadmap_id,
        frozenset({S.generating_content, S.failed}),
        status=S.generating_content,
        error=None,
        failed_concepts=[],
    )
    if token is None:
        await _skipped(rt, roadmap_id, step, "owned by another job or nothing to do")
        return None
    if roadmap.status is not S.generating_content:
        await rt.events.emit(roadmap_id, "status", status=S.generating_content.value, error=None)

    async def fence(session: AsyncSession) -> None:
        # Content finished before a cancel is still saved: it was paid for, and resume skips it.
        await _write_owned(session, rt, roadmap_id, token, even_cancelled=True)

    try:
        async with _heartbeat(rt, roadmap_id, token):
            report = await _or_fail(
                rt,
                roadmap_id,
                step,
                timer,
                token,
                _unless_cancelled(
                    rt,
                    roadmap_id,
                    generate_missing_content(
                        rt.db,
                        rt.llm,
                        roadmap_id,
                        rt.options,
                        rt.events,
                        batch_size=rt.settings.content_batch_size,
                        batch_window_s=rt.settings.content_batch_window_s,
                        hold_connections=rt.settings.content_db_semaphore
                        if rt.settings.content_write_mode == "per-concept"
                        else None,
                        fence=fence,
                    ),
                ),
            )
        if report is None:
            return S.failed
        if report.failed:
            recorded = await fail(
                rt,
                roadmap_id,
                step,
                _failed_concepts_reason(step, report),
                timer.ms,
                owner=token,
                failed_concepts=[f.as_json() for f in report.failed],
            )
            if not recorded:
                raise LeaseLost(roadmap_id, token)
            return S.failed
        async with rt.db.session() as session:
            # Only the owner's committed update may announce `completed`.
            await _write_owned(
                session,
                rt,
                roadmap_id,
                token,
                release=True,
                status=S.completed,
                error=None,
                completed_at=func.now(),
            )
    except LeaseLost as exc:
        await _skipped(rt, roadmap_id, step, str(exc))
        return None
    except JobCancelled:
        await _stopped(rt, roadmap_id, token, step)
        return S.cancelled
    detail: Mapping[str, Any] = {
        "generated": report.generated,
        "skipped": report.skipped,
        "concepts": report.progress.total,
        "transactions": report.transactions,
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


async def recover_abandoned(rt: Runtime) -> list[uuid.UUID]:
    """The sweeper: re-queue every in-flight roadmap whose job died (expired lease) or whose
    job never started (no lease, untouched for a lease period); the roadmaps re-queued.

    Each roadmap is taken by one conditional update (so concurrent sweepers re-queue it once),
    and its job resumes from the checkpoint: only concepts without saved content are generated.
    """
    stale = repositories.lease_until(-rt.settings.job_lease_s)
    async with rt.db.session() as session:
        candidates = await repositories.abandoned_roadmaps(session, _IN_FLIGHT, stale)
    recovered: list[uuid.UUID] = []
    for roadmap_id in candidates:
        async with rt.db.session() as session:
            taken = await repositories.take_abandoned(session, roadmap_id, _IN_FLIGHT, stale)
        if taken is None:
            continue  # another sweeper took it, or its job came back to life
        job, args = _recovery_job(taken)
        try:
            await rt.enqueue(job, roadmap_id, *args)
        except Exception as exc:
            log.warning("roadmap %s: sweeper could not queue %s (%s)", roadmap_id, job, exc)
            continue
        log.warning(
            "roadmap %s: job abandoned in %s; re-queued %s", roadmap_id, taken.status.value, job
        )
        # Open pages show that the silence is a recovery, not a hang (issue 22).
        await rt.events.emit(roadmap_id, "recovering", status=taken.status.value, job=job)
        await rt.log_step(roadmap_id, "sweeper", "requeued", detail={"job": job})
        recovered.append(roadmap_id)
    return recovered


def _recovery_job(roadmap: Roadmap) -> tuple[str, tuple[Any, ...]]:
    if roadmap.status is S.review_submitted:
        return "resume_after_review", (bool(roadmap.review_approved), roadmap.feedback)
    if roadmap.curriculum_ready:
        return "resume_from_checkpoint", ()
    return "generate_roadmap", ()
