"""The Celery app (queues `workflow`, `content`, `logs`) and its tasks, all on loopsafe's loops."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from typing import Any

import loopsafe.celery
import loopsafe.db
from roadmap_app import repositories
from roadmap_app.config import get_settings
from roadmap_app.events import EventPublisher
from roadmap_app.jobs import TASK_PREFIX, create_celery_app, job_signature
from roadmap_app.llm import LLMProvider, get_provider
from roadmap_app.pipeline import workflow
from roadmap_app.resources import configure_resources

__all__ = ("app", "enqueue", "log_step", "runtime")

log = logging.getLogger("roadmap_app.worker")

settings = get_settings()
configure_resources(settings)
app = create_celery_app(settings)
loopsafe.celery.install(app, loop=settings.celery_worker_loop)


async def enqueue(job: str, roadmap_id: uuid.UUID, *args: Any) -> None:
    """Queue `job` without blocking the event loop; gives up after 10 s without a broker."""
    signature = job_signature(app, job, str(roadmap_id), *args)
    await loopsafe.celery.send(signature.set(send_timeout=10))


_logs_queue_down_until = 0.0


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def log_step(
    roadmap_id: uuid.UUID,
    step: str,
    status: str,
    *,
    duration_ms: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record an execution log through the `logs` queue; never raises.

    Without a broker the row is written directly: losing the log of a failure is worse than
    writing it from the wrong process.
    """
    row = {
        "roadmap_id": str(roadmap_id),
        "step": step,
        "status": status,
        "duration_ms": duration_ms,
        "worker": _worker_name(),
        "detail": detail or {},
    }
    global _logs_queue_down_until
    if time.monotonic() >= _logs_queue_down_until:
        try:
            await enqueue("write_execution_log", roadmap_id, row)
            return
        except Exception as exc:
            # Don't pay the broker's connect timeout again for every log while it is away.
            _logs_queue_down_until = time.monotonic() + 15.0
            log.warning(
                "execution log not queued (%s: %s); writing it directly", type(exc).__name__, exc
            )
    try:
        await _write_log(row)
    except Exception:
        log.exception("execution log lost: %s", row)


async def _write_log(row: dict[str, Any]) -> None:
    async with loopsafe.db.session() as session:
        await repositories.add_execution_log(
            session,
            roadmap_id=uuid.UUID(row["roadmap_id"]),
            step=str(row["step"]),
            status=str(row["status"]),
            duration_ms=row.get("duration_ms"),
            worker=row.get("worker"),
            detail=row.get("detail") or {},
        )


@functools.lru_cache(maxsize=1)
def _provider() -> LLMProvider:
    return get_provider(settings)


@functools.lru_cache(maxsize=1)
def _publisher() -> EventPublisher:
    return EventPublisher(settings)


def runtime() -> workflow.Runtime:
    """The workflow's dependencies in this worker process."""
    return workflow.Runtime(
        db=loopsafe.db.get_database(),
        llm=_provider(),
        settings=settings,
        events=_publisher(),
        enqueue=enqueue,
        log_step=log_step,
    )


def _result(status: Any) -> str | None:
    return None if status is None else str(status.value)


@loopsafe.celery.async_task(app, name=TASK_PREFIX + "generate_roadmap")
async def generate_roadmap(roadmap_id: str) -> str | None:
    """Intent analysis and curriculum design, then review or content generation."""
    return _result(await workflow.generate_roadmap(runtime(), uuid.UUID(roadmap_id)))


@loopsafe.celery.async_task(app, name=TASK_PREFIX + "resume_after_review")
async def resume_after_review(
    roadmap_id: str, approve: bool, feedback: str | None = None
) -> str | None:
    """Continue after a review: content on approval, a new curriculum on rejection."""
    return _result(
        await workflow.resume_after_review(runtime(), uuid.UUID(roadmap_id), approve, feedback)
    )


@loopsafe.celery.async_task(app, name=TASK_PREFIX + "generate_content")
async def generate_content(roadmap_id: str) -> str | None:
    """Tutorial, resources and quiz for every concept."""
    return _result(await workflow.generate_content(runtime(), uuid.UUID(roadmap_id)))


@loopsafe.celery.async_task(app, name=TASK_PREFIX + "resume_from_checkpoint")
async def resume_from_checkpoint(roadmap_id: str) -> str | None:
    """Content for the concepts not saved yet (after a crash or a failure)."""
    return _result(await workflow.generate_content(runtime(), uuid.UUID(roadmap_id), step="resume"))


@loopsafe.celery.async_task(app, name=TASK_PREFIX + "write_execution_log")
async def write_execution_log(roadmap_id: str, row: dict[str, Any]) -> None:
    """Persist one execution log row."""
    await _write_log({**row, "roadmap_id": roadmap_id})


@loopsafe.celery.async_task(app, name=TASK_PREFIX + "sweep_abandoned")
async def sweep_abandoned() -> int:
    """Re-queue roadmaps whose job died (run every `SWEEP_INTERVAL_S` by `worker --beat`)."""
    return len(await workflow.recover_abandoned(runtime()))
