"""`/api/v1/roadmaps`: submit a goal, read a roadmap, review, resume, cancel or delete it, stream
its events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import loopsafe.db
from roadmap_app import repositories
from roadmap_app.api.deps import CeleryDep, EventsDep, SessionDep, SettingsDep, enqueue
from roadmap_app.api.query_guard import reject_unknown_query
from roadmap_app.api.request_guard import MAX_BODY_BYTES
from roadmap_app.api.schemas import (
    NO_CONTROL_CHARACTERS,
    ConceptOut,
    ContentOut,
    CurriculumVersionOut,
    ErrorOut,
    ExecutionLogOut,
    FailedConceptOut,
    JobAccepted,
    ModuleOut,
    ProgressOut,
    ReviewIn,
    RoadmapCreate,
    RoadmapOut,
    RoadmapSummary,
    StageOut,
)
from roadmap_app.api.tutorial_html import tutorial_html
from roadmap_app.config import Settings
from roadmap_app.events import EventPublisher, EventStream
from roadmap_app.export import roadmap_markdown
from roadmap_app.failures import concept_message, learner_message
from roadmap_app.models import TERMINAL_STATUSES, Roadmap, RoadmapStatus, Stage

__all__ = ("router",)

router = APIRouter(
    prefix="/roadmaps", tags=["roadmaps"], dependencies=[Depends(reject_unknown_query)]
)
S = RoadmapStatus

# While Redis is unreachable an event stream re-reads the database this often, and tries to
# subscribe again this often; while Redis is up it reads the database only when it connects.
POLL_INTERVAL_S = 1.0
RESUBSCRIBE_INTERVAL_S = 5.0
# Seconds a client refused for too many open streams is asked to wait (`Retry-After`).
STREAMS_RETRY_AFTER_S = 5


def _errors(*codes: int, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the refusals a route really answers (422 FastAPI documents itself).

    Refusals are JSON even from the event stream, whose route FastAPI would document them under
    `text/event-stream`: there the body is named by reference (the other routes' `model`
    registers `ErrorOut`), and its 503 is the limit of open streams.
    """
    meaning = {
        404: "No roadmap has this id.",
        409: "The roadmap is in a state where this is not possible (for a resume: completed, "
        "waiting for a review, or a job is running or queued on it; for a cancel: already "
        "finished; for a delete: a job is running or queued on it); `detail` says which.",
        413: f"The request body is larger than {MAX_BODY_BYTES // 1024} KiB.",
        415: "The request body is not JSON.",
        503: "The job queue (broker) is unreachable; the roadmap is marked failed, resume it later.",
    }
    body: dict[str, Any] = (
        {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
        if stream
        else {"model": ErrorOut}
    )
    responses: dict[int | str, dict[str, Any]] = {
        code: {"description": meaning[code], **body} for code in codes
    }
    if stream and 503 in responses:
        responses[503].update(
            description="This API process already serves `SSE_MAX_SUBSCRIBERS` event streams; "
            f"retry after the `Retry-After` seconds ({STREAMS_RETRY_AFTER_S}).",
            headers={"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
        )
    return responses


def _links(id_expression: str) -> dict[str, Any]:
    """OpenAPI links from a response carrying a roadmap id to the operations that take one."""
    operations = {
        "GetRoadmap": "get_roadmap",
        "RoadmapEvents": "roadmap_events",
        "ReviewRoadmap": "review_roadmap",
        "ResumeRoadmap": "resume_roadmap",
        "CancelRoadmap": "cancel_roadmap",
        "DeleteRoadmap": "delete_roadmap",
    }
    return {
        name: {"operationId": operation, "parameters": {"roadmap_id": id_expression}}
        for name, operation in operations.items()
    }


_Out = TypeVar("_Out", bound=BaseModel)


def _progress(done: int, total: int) -> ProgressOut:
    return ProgressOut(done=done, total=total, percent=100 * done // total if total else 0)


def _from_row(schema: type[_Out], row: object, **computed: Any) -> _Out:
    """`schema` filled from `row`'s attributes of the same names, except the fields in `computed`."""
    copied = {name: getattr(row, name) for name in schema.model_fields if name not in computed}
    return schema(**copied, **computed)


def _not_found(roadmap_id: uuid.UUID) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"roadmap {roadmap_id} not found")


async def _claim_refused(
    session: AsyncSession, roadmap_id: uuid.UUID, why: Callable[[Roadmap], str]
) -> HTTPException:
    """A status change claimed only from some statuses did not happen: 404 if the roadmap is
    gone, else 409 saying `why` (from the roadmap as it is now)."""
    roadmap = await repositories.get_roadmap(session, roadmap_id)
    if roadmap is None:
        return _not_found(roadmap_id)
    return HTTPException(status.HTTP_409_CONFLICT, why(roadmap))


async def _queue_or_fail(
    session: AsyncSession,
    celery: Any,
    events: EventPublisher,
    roadmap_id: uuid.UUID,
    job: str,
    *args: Any,
) -> None:
    """Queue a job; if the broker is unreachable, record that on the roadmap and answer 503."""
    try:
        await enqueue(celery, job, str(roadmap_id), *args)
    except Exception as exc:
        reason = (
            f"could not queue {job} ({type(exc).__name__}: {exc}); check that the broker "
            f"(REDIS_URL) is reachable, then POST /api/v1/roadmaps/{roadmap_id}/resume"
        )
        await repositories.update_roadmap(session, roadmap_id, status=S.failed, error=reason)
        await session.commit()
        await events.emit(roadmap_id, "status", status=S.failed.value, error=reason)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, reason) from exc


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="create_roadmap",
    responses={
        202: {"links": _links("$response.body#/task_id")},
        **_errors(413, 415, 503),
    },
)
async def create_roadmap(
    body: RoadmapCreate, session: SessionDep, celery: CeleryDep, events: EventsDep
) -> JobAccepted:
    """Create a roadmap for a learning goal and start generating it; returns immediately."""
    roadmap = await repositories.create_roadmap(
        session,
        goal=body.goal,
        level=body.level,
        weekly_hours=body.weekly_hours,
        review=body.review,
    )
    roadmap_id = roadmap.id
    await session.commit()
    await _queue_or_fail(session, celery, events, roadmap_id, "generate_roadmap")
    return JobAccepted(task_id=roadmap_id, status=S.pending.value)


@router.get(
    "",
    operation_id="list_roadmaps",
    responses={
        **_errors(404),
        200: {
            "headers": {
                "Link": {
                    "description": 'The next page, `<url>; rel="next"`, when this one is full.',
                    "schema": {"type": "string"},
                }
            }
        },
    },
)
async def list_roadmaps(
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        uuid.UUID | None,
        Query(
            description="Start after this roadmap (the last one of the previous page; the "
            '`Link: rel="next"` header says it).',
        ),
    ] = None,
    status_: Annotated[
        RoadmapStatus | None, Query(alias="status", description="Only roadmaps in this status.")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            # PostgreSQL's text cannot hold NUL; no goal holds a control character either.
            pattern=NO_CONTROL_CHARACTERS,
            description="Only roadmaps whose goal or title contains this text (any case).",
        ),
    ] = None,
) -> list[RoadmapSummary]:
    """Roadmaps newest first, `limit` per page; a full page links to the next (`Link` header)."""
    keyset = None
    if after is not None:
        last = await repositories.get_roadmap(session, after)
        if last is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"roadmap {after} (where the page should start) not found; it was deleted: "
                "list again from the first page",
            )
        keyset = (last.created_at, last.id)
    roadmaps = await repositories.list_roadmaps(
        session, limit=limit, after=keyset, status=status_, search=q
    )
    counts = await repositories.progress_by_roadmap(session, [r.id for r in roadmaps])
    if len(roadmaps) == limit:
        following = request.url.include_query_params(after=str(roadmaps[-1].id))
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return [_summary(r, *counts.get(r.id, (0, 0))) for r in roadmaps]


def _summary(roadmap: Roadmap, done: int, total: int) -> RoadmapSummary:
    return _from_row(
        RoadmapSummary, roadmap, status=roadmap.status.value, progress=_progress(done, total)
    )


@router.get(
    "/{roadmap_id}",
    operation_id="get_roadmap",
    responses={200: {"links": _links("$response.body#/id")}, **_errors(404)},
)
async def get_roadmap(
    roadmap_id: uuid.UUID, session: SessionDep, content: bool = True
) -> RoadmapOut:
    """The roadmap with its curriculum and (unless `content=false`) every concept's content."""
    roadmap = await repositories.get_roadmap_tree(session, roadmap_id)
    if roadmap is None:
        raise _not_found(roadmap_id)
    logs = await repositories.list_execution_logs(session, roadmap_id)
    versions = await repositories.list_curriculum_versions(session, roadmap_id)
    stages: list[StageOut] = []
    titles: dict[int, str] = {}
    # Stored as the job recorded them: {concept_id, slug, reason}.
    failures = {failed["concept_id"]: failed["reason"] for failed in roadmap.failed_concepts}
    done_total = total_total = 0
    for stage in roadmap.stages:
        modules: list[ModuleOut] = []
        done = total = 0
        for module in stage.modules:
            concepts: list[ConceptOut] = []
            for concept in module.concepts:
                titles[concept.id] = concept.title
                saved = concept.content
                total += 1
                done += saved is not None
                concepts.append(
                    _from_row(
                        ConceptOut,
                        concept,
                        has_content=saved is not None,
                        failure_reason=concept_message(failures[concept.id])
                        if saved is None and concept.id in failures
                        else None,
                        content=_from_row(
                            ContentOut,
                            saved,
                            tutorial_html=tutorial_html(saved.tutorial, concept.title),
                        )
                        if saved is not None and content
                        else None,
                    )
                )
            modules.append(_from_row(ModuleOut, module, concepts=concepts))
        done_total += done
        total_total += total
        stages.append(_from_row(StageOut, stage, progress=_progress(done, total), modules=modules))
    return _from_row(
        RoadmapOut,
        roadmap,
        status=roadmap.status.value,
        progress=_progress(done_total, total_total),
        stages=stages,
        failure_message=learner_message(roadmap.error, len(roadmap.failed_concepts), total_total)
        if roadmap.status is S.failed
        else None,
        failed_concepts=[
            FailedConceptOut(
                id=failed["concept_id"],
                title=titles.get(failed["concept_id"], failed["slug"]),
                reason=failed["reason"],
            )
            for failed in roadmap.failed_concepts
        ],
        curriculum_versions=[_from_row(CurriculumVersionOut, v) for v in versions],
        logs=[_from_row(ExecutionLogOut, log) for log in logs],
    )


@router.get(
    "/{roadmap_id}/export",
    operation_id="export_roadmap",
    response_class=Response,
    responses={
        200: {
            "description": "The whole roadmap as a file to keep: Markdown (curriculum, "
            "tutorials, resources, quizzes) or JSON (what `get_roadmap` answers, without logs).",
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/RoadmapOut"}},
            },
        },
        **_errors(404),
    },
)
async def export_roadmap(
    roadmap_id: uuid.UUID,
    session: SessionDep,
    format_: Annotated[
        Literal["markdown", "json"],
        Query(alias="format", description="`markdown` (default) or `json`."),
    ] = "markdown",
) -> Response:
    """Download the roadmap as Markdown or JSON (`Content-Disposition: attachment`)."""
    roadmap = await get_roadmap(roadmap_id, session, content=True)
    name = repositories.slugify(roadmap.title or roadmap.goal)
    if format_ == "json":
        body = roadmap.model_copy(update={"logs": []}).model_dump_json(indent=2)
        media_type, extension = "application/json", "json"
    else:
        body, media_type, extension = roadmap_markdown(roadmap), "text/markdown", "md"
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}.{extension}"'},
    )


@router.post(
    "/{roadmap_id}/review",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="review_roadmap",
    responses=_errors(404, 409, 413, 415, 503),
)
async def review_roadmap(
    roadmap_id: uuid.UUID,
    body: ReviewIn,
    session: SessionDep,
    celery: CeleryDep,
    events: EventsDep,
) -> JobAccepted:
    """Approve the curriculum (content generation starts) or reject it with feedback (a new
    curriculum is designed and comes back for review)."""
    claimed = await repositories.update_roadmap(
        session,
        roadmap_id,
        only_from={S.human_review_pending},
        status=S.review_submitted,
        review_approved=body.approve,
        feedback=body.feedback,
    )
    if not claimed:
        raise await _claim_refused(
            session,
            roadmap_id,
            lambda roadmap: (
                f"roadmap {roadmap_id} is {roadmap.status.value!r}; only a roadmap in "
                "'human_review_pending' can be reviewed"
            ),
        )
    await session.commit()
    await events.emit(roadmap_id, "status", status=S.review_submitted.value, error=None)
    await _queue_or_fail(
        session, celery, events, roadmap_id, "resume_after_review", body.approve, body.feedback
    )
    return JobAccepted(task_id=roadmap_id, status=S.review_submitted.value)


@router.post(
    "/{roadmap_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="resume_roadmap",
    responses=_errors(404, 409, 413, 415, 503),
)
async def resume_roadmap(
    roadmap_id: uuid.UUID,
    session: SessionDep,
    celery: CeleryDep,
    events: EventsDep,
    settings: SettingsDep,
) -> JobAccepted:
    """Continue an interrupted, failed or cancelled roadmap from its checkpoint: only concepts
    without saved content are generated (or the curriculum is redesigned if it never got that
    far). Answers 409 while a job is queued or running on it, so pressing it twice is harmless."""
    roadmap = await repositories.get_roadmap(session, roadmap_id)
    if roadmap is None:
        raise _not_found(roadmap_id)
    current = roadmap.status
    if current is S.completed:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"roadmap {roadmap_id} is already completed; nothing to resume",
        )
    if current is S.human_review_pending:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"roadmap {roadmap_id} is waiting for a review: POST /api/v1/roadmaps/{roadmap_id}/review",
        )
    running_until = await repositories.lease_holder(session, roadmap_id)
    if running_until is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"roadmap {roadmap_id} is being generated by a running job (its lease runs until "
            f"{running_until.isoformat()}); watch its events instead — if that job's worker "
            "died, the roadmap is resumed automatically once the lease expires",
        )
    args: tuple[Any, ...] = ()
    new_status: RoadmapStatus
    if current is S.review_submitted:
        job, new_status = "resume_after_review", current
        args = (bool(roadmap.review_approved), roadmap.feedback)
    elif roadmap.curriculum_ready:
        job, new_status = "resume_from_checkpoint", S.generating_content
    else:
        job, new_status = "generate_roadmap", S.pending
    # A failed or cancelled roadmap has no job. One in flight without a lease has a job queued
    # (a second resume would only queue a duplicate), unless no worker took it for a lease
    # period: then it was lost, the sweeper's rule too. `only_from={current}` and `unleased`:
    # a job or another resume that took the roadmap since it was read above still wins.
    idle = current in (S.failed, S.cancelled)
    claimed = await repositories.update_roadmap(
        session,
        roadmap_id,
        only_from={current},
        unleased=True,
        untouched_since=None if idle else repositories.lease_until(-settings.job_lease_s),
        status=new_status,
        error=None,
    )
    if not claimed:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"roadmap {roadmap_id} already has a job queued or running (status "
            f"{current.value!r}); watch its events instead — if no worker takes it, it is "
            "re-queued automatically",
        )
    await session.commit()
    await events.emit(roadmap_id, "status", status=new_status.value, error=None)
    await _queue_or_fail(session, celery, events, roadmap_id, job, *args)
    return JobAccepted(task_id=roadmap_id, status=new_status.value)


@router.post(
    "/{roadmap_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="cancel_roadmap",
    responses=_errors(404, 409, 413, 415),
)
async def cancel_roadmap(
    roadmap_id: uuid.UUID, session: SessionDep, events: EventsDep
) -> JobAccepted:
    """Stop generating the roadmap: status `cancelled` at once; a running job stops within about
    a second, its LLM calls cancelled, and what it had finished is saved. `resume` continues it."""
    claimed = await repositories.update_roadmap(
        session, roadmap_id, only_from=set(S) - TERMINAL_STATUSES, status=S.cancelled, error=None
    )
    if not claimed:
        raise await _claim_refused(
            session,
            roadmap_id,
            lambda roadmap: (
                f"roadmap {roadmap_id} is already {roadmap.status.value!r}; only a "
                "roadmap still being generated or waiting for a review can be cancelled"
            ),
        )
    await session.commit()
    await events.emit(roadmap_id, "status", status=S.cancelled.value, error=None)
    return JobAccepted(task_id=roadmap_id, status=S.cancelled.value)


@router.delete(
    "/{roadmap_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="delete_roadmap",
    responses=_errors(404, 409, 413, 415),
)
async def delete_roadmap(roadmap_id: uuid.UUID, session: SessionDep, events: EventsDep) -> None:
    """Delete the roadmap with its curriculum, content and logs; refused (409) while a job is
    running or queued on it: cancel it first."""
    deleted = await repositories.delete_roadmap(session, roadmap_id, only_from=_DELETABLE)
    if not deleted:

        def why(roadmap: Roadmap) -> str:
            if roadmap.status is S.cancelled:  # refused, so its job still holds the lease
                return (
                    f"roadmap {roadmap_id} is cancelled and its job is still stopping (saving "
                    "what it had finished); try again in a few seconds"
                )
            return (
                f"roadmap {roadmap_id} is {roadmap.status.value!r}: a job is running or queued "
                f"on it; cancel it first (POST /api/v1/roadmaps/{roadmap_id}/cancel), then "
                "delete it once it has stopped"
            )

        raise await _claim_refused(session, roadmap_id, why)
    await session.commit()
    # Open event streams of this roadmap end on it.
    await events.emit(roadmap_id, "deleted")


# A job can be running or queued on a roadmap in any other status.
_DELETABLE = frozenset({S.completed, S.failed, S.cancelled, S.human_review_pending})


@router.post(
    "/{roadmap_id}/concepts/{concept_id}/regenerate",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="regenerate_concept",
    responses=_errors(404, 409, 413, 415, 503),
)
async def regenerate_concept(
    roadmap_id: uuid.UUID,
    concept_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    session: SessionDep,
    celery: CeleryDep,
    events: EventsDep,
) -> JobAccepted:
    """Write one concept's tutorial, resources and quiz again (its saved content is replaced);
    only while no job is running or queued on the roadmap and its curriculum is final."""
    roadmap = await repositories.get_roadmap(session, roadmap_id)
    if roadmap is None:
        raise _not_found(roadmap_id)
    refusal = (
        f"roadmap {roadmap_id} is {roadmap.status.value!r}: a concept can be written again once "
        "the roadmap is completed, failed or cancelled and no job runs on it"
    )
    if not roadmap.curriculum_ready:
        raise HTTPException(status.HTTP_409_CONFLICT, refusal + " (and its curriculum is final)")
    claimed = await repositories.update_roadmap(
        session,
        roadmap_id,
        only_from=_DELETABLE - {S.human_review_pending},
        unleased=True,
        status=S.generating_content,
        error=None,
        completed_at=None,
        failed_concepts=[],
    )
    if not claimed:
        raise HTTPException(status.HTTP_409_CONFLICT, refusal)
    if not await repositories.delete_content(session, roadmap_id, concept_id):
        await session.rollback()
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"roadmap {roadmap_id} has no concept {concept_id}"
        )
    await session.commit()
    await events.emit(roadmap_id, "status", status=S.generating_content.value, error=None)
    # The checkpoint job writes what has no content: now exactly this concept.
    await _queue_or_fail(session, celery, events, roadmap_id, "resume_from_checkpoint")
    return JobAccepted(task_id=roadmap_id, status=S.generating_content.value)


async def _stream_slot(request: Request, settings: SettingsDep) -> AsyncIterator[None]:
    """A place among this process's `SSE_MAX_SUBSCRIBERS` open event streams, for as long as the
    stream stays open (each holds a Redis connection); 503 with `Retry-After` when none is free."""
    state = request.app.state
    if state.open_streams >= settings.sse_max_subscribers:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"this API process already serves {settings.sse_max_subscribers} event streams "
            f"(SSE_MAX_SUBSCRIBERS); retry in {STREAMS_RETRY_AFTER_S} s",
            headers={"Retry-After": str(STREAMS_RETRY_AFTER_S)},
        )
    state.open_streams += 1
    try:
        yield
    finally:
        state.open_streams -= 1


async def _existing_roadmap(roadmap_id: uuid.UUID) -> uuid.UUID:
    # A short session of its own: a request-scoped one would hold a pooled connection for as long
    # as the event stream stays open.
    async with loopsafe.db.session() as session:
        if await repositories.get_roadmap(session, roadmap_id) is None:
            raise _not_found(roadmap_id)
    return roadmap_id


async def snapshot(roadmap_id: uuid.UUID) -> dict[str, Any]:
    """The roadmap's current state as an event: what a late subscriber needs to catch up."""
    async with loopsafe.db.session() as session:
        roadmap = await repositories.get_roadmap(session, roadmap_id)
        if roadmap is None:
            raise LookupError(f"roadmap {roadmap_id} was deleted")
        stage_rows = (
            await session.execute(
                select(Stage.position, Stage.title)
                .where(Stage.roadmap_id == roadmap_id)
                .order_by(Stage.position)
            )
        ).all()
        report = await repositories.progress(session, roadmap_id)
        return {
            "type": "snapshot",
            "roadmap_id": str(roadmap_id),
            "status": roadmap.status.value,
            "error": roadmap.error,
            "title": roadmap.title,
            "curriculum_version": roadmap.curriculum_version,
            "done": report.done,
            "total": report.total,
            "stages": [
                {
                    "position": position,
                    "title": title,
                    "done": report.stage_done.get(position, 0),
                    "total": report.stage_total.get(position, 0),
                }
                for position, title in stage_rows
            ],
        }


def _is_terminal(event: dict[str, Any]) -> bool:
    if event.get("type") == "deleted":
        return True
    return event.get("type") in ("status", "snapshot") and event.get("status") in {
        s.value for s in TERMINAL_STATUSES
    }


async def _subscribed(settings: Settings, roadmap_id: uuid.UUID) -> EventStream | None:
    """An active subscription to the roadmap's events, or None while Redis is unreachable."""
    stream = EventStream(settings, roadmap_id)
    opened = False
    try:
        opened = await stream.open()
    finally:
        if not opened:
            await stream.close()
    return stream if opened else None


@router.get(
    "/{roadmap_id}/events",
    response_class=EventSourceResponse,
    operation_id="roadmap_events",
    # The slot first: a refused stream costs no database read.
    dependencies=[Depends(_stream_slot)],
    responses=_errors(404, 503, stream=True),
)
async def roadmap_events(
    roadmap_id: Annotated[uuid.UUID, Depends(_existing_roadmap)], settings: SettingsDep
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: the current state first (`snapshot`), then every progress event as
    it happens, until the roadmap is completed or failed.

    The database is read once, when the stream opens; the events come from Redis. While Redis is
    unreachable the stream reads the database once a second instead (a `snapshot` whenever the
    state changed), and subscribes again every few seconds.
    """
    loop = asyncio.get_running_loop()
    number = 0

    def sse(event: dict[str, Any]) -> ServerSentEvent:
        nonlocal number
        number += 1
        return ServerSentEvent(data=event, id=str(number))

    stream: EventStream | None = None
    try:
        stream = await _subscribed(settings, roadmap_id)
        resubscribe_at = loop.time() + RESUBSCRIBE_INTERVAL_S
        state = await snapshot(roadmap_id)
        yield sse(state)
        seen = (state["status"], state["done"], state["curriculum_version"])
        while not _is_terminal(state):
            if stream is not None:
                event = await stream.next()
                if event["type"] != "stream_lost":
                    status_now, done_now, version_now = seen
                    if event["type"] == "status":
                        status_now = event["status"]
                    elif event["type"] == "concept_saved":
                        if int(event["done"]) <= done_now:
                            # Saved between the subscription and the snapshot: already counted.
                            continue
                        done_now = int(event["done"])
                    elif event["type"] == "curriculum":
                        version_now, done_now = int(event["version"]), 0
                    seen = (status_now, done_now, version_now)
                    yield sse(event)
                    if _is_terminal(event):
                        break
                    continue
                # Events published from now until a new subscription are lost: poll meanwhile.
                await stream.close()
                stream = None
                resubscribe_at = loop.time() + RESUBSCRIBE_INTERVAL_S
            else:
                await asyncio.sleep(POLL_INTERVAL_S)
                if loop.time() >= resubscribe_at:
                    stream = await _subscribed(settings, roadmap_id)
                    resubscribe_at = loop.time() + RESUBSCRIBE_INTERVAL_S
            # Read when the subscription was lost, on each poll, and once more when it is back
            # (to catch up with what was published before it).
            try:
                state = await snapshot(roadmap_id)
            except LookupError:
                yield sse({"type": "deleted", "roadmap_id": str(roadmap_id)})
                break
            now = (state["status"], state["done"], state["curriculum_version"])
            if now != seen:
                seen = now
                yield sse(state)
    finally:
        if stream is not None:
            await stream.close()
