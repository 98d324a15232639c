"""The workflow's status transitions, and its failure rule: state first, notification second."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from roadmap_testkit import query

import loopsafe.db
from roadmap_app import repositories
from roadmap_app.config import Settings
from roadmap_app.llm import LLMProvider, OfflineProvider
from roadmap_app.models import RoadmapStatus
from roadmap_app.pipeline import workflow

pytestmark = [pytest.mark.postgres]
S = RoadmapStatus


class Recorder:
    """Notifier, job queue and execution log of a workflow run, recorded in memory."""

    def __init__(self, database_url: str, *, broken: bool = False) -> None:
        self.database_url = database_url
        self.broken = broken
        self.events: list[dict[str, Any]] = []
        self.jobs: list[tuple[str, tuple[Any, ...]]] = []
        self.logs: list[tuple[str, str, dict[str, Any]]] = []
        self.status_when_failure_announced: str | None = None

    async def emit(self, roadmap_id: uuid.UUID | str, type: str, **payload: Any) -> bool:
        if payload.get("status") == "failed":
            (row,) = query(
                self.database_url, "SELECT status FROM roadmaps WHERE id = %(i)s", {"i": roadmap_id}
            )
            self.status_when_failure_announced = row[0]
            if self.broken:
                raise ConnectionError("notification channel is down")
        self.events.append({"type": type, **payload})
        return True

    async def enqueue(self, job: str, roadmap_id: uuid.UUID, *args: Any) -> None:
        self.jobs.append((job, (roadmap_id, *args)))

    async def log_step(
        self,
        roadmap_id: uuid.UUID,
        step: str,
        status: str,
        *,
        duration_ms: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if self.broken and status == "failed":
            raise ConnectionError("log queue is down")
        self.logs.append((step, status, detail or {}))


def _runtime(
    settings: Settings, recorder: Recorder, llm: LLMProvider | None = None
) -> workflow.Runtime:
    return workflow.Runtime(
        db=loopsafe.db.get_database(),
        llm=llm or OfflineProvider(),
        settings=settings,
        events=recorder,
        enqueue=recorder.enqueue,
        log_step=recorder.log_step,
    )


async def _new(review: bool = False, goal: str = "Learn Python") -> uuid.UUID:
    async with loopsafe.db.session() as session:
        roadmap = await repositories.create_roadmap(
            session, goal=goal, level="beginner", weekly_hours=4, review=review
        )
        return roadmap.id


def _row(database_url: str, roadmap_id: uuid.UUID) -> tuple[Any, ...]:
    (row,) = query(
        database_url,
        "SELECT status, error, curriculum_version, curriculum_ready FROM roadmaps WHERE id = %(i)s",
        {"i": roadmap_id},
    )
    return tuple(row)


async def test_without_review_the_curriculum_is_designed_and_content_queued(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new()
    status = await workflow.generate_roadmap(_runtime(configured, recorder), roadmap_id)
    assert status is S.generating_content
    assert _row(database_url, roadmap_id) == ("generating_content", None, 1, True)
    assert recorder.jobs == [("generate_content", (roadmap_id,))]
    statuses = [e["status"] for e in recorder.events if e["type"] == "status"]
    assert statuses == ["analyzing", "designing", "generating_content"]
    assert [(s, st) for s, st, _ in recorder.logs] == [
        ("intent", "succeeded"),
        ("curriculum", "succeeded"),
    ]

    # A second delivery of the same job changes nothing.
    assert await workflow.generate_roadmap(_runtime(configured, recorder), roadmap_id) is None
    assert recorder.logs[-1][:2] == ("generate_roadmap", "skipped")

    assert (
        await workflow.generate_content(_runtime(configured, recorder), roadmap_id) is S.completed
    )
    assert _row(database_url, roadmap_id)[0] == "completed"
    assert await workflow.generate_content(_runtime(configured, recorder), roadmap_id) is None


async def test_review_rejection_redesigns_with_feedback_and_approval_queues_content(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new(review=True)
    runtime = _runtime(configured, recorder)
    assert await workflow.generate_roadmap(runtime, roadmap_id) is S.human_review_pending
    assert recorder.jobs == []
    assert _row(database_url, roadmap_id) == ("human_review_pending", None, 1, False)

    # Not submitted through the API yet: the job does not act on its own.
    assert await workflow.resume_after_review(runtime, roadmap_id, False, "more projects") is None

    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(session, roadmap_id, status=S.review_submitted)
    assert (
        await workflow.resume_after_review(runtime, roadmap_id, False, "more projects")
        is S.human_review_pending
    )
    assert _row(database_url, roadmap_id) == ("human_review_pending", None, 2, False)
    titles = [
        t
        for (t,) in query(
            database_url, "SELECT title FROM concepts WHERE roadmap_id = %(i)s", {"i": roadmap_id}
        )
    ]
    assert any(t.startswith("more projects") for t in titles)

    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(session, roadmap_id, status=S.review_submitted)
    assert (
        await workflow.resume_after_review(runtime, roadmap_id, True, None) is S.generating_content
    )
    assert _row(database_url, roadmap_id) == ("generating_content", None, 2, True)
    assert recorder.jobs == [("generate_content", (roadmap_id,))]


async def test_llm_failure_records_failed_state_with_the_reason_before_notifying(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new()
    status = await workflow.generate_roadmap(
        _runtime(configured, recorder, OfflineProvider(failure_rate=1.0)), roadmap_id
    )
    assert status is S.failed
    state, error, _, _ = _row(database_url, roadmap_id)
    assert state == "failed"
    assert error.startswith(
        "curriculum: intent analysis failed after 3 attempts: offline provider: simulated failure"
    )
    assert recorder.status_when_failure_announced == "failed"  # state first
    assert recorder.events[-1] == {
        "type": "status",
        "status": "failed",
        "error": error,
        "step": "curriculum",
    }
    assert recorder.logs[-1][:2] == ("curriculum", "failed")
    assert recorder.jobs == []


async def test_a_failing_notification_never_fails_the_job(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url, broken=True)
    roadmap_id = await _new()
    runtime = _runtime(configured, recorder)
    assert await workflow.generate_roadmap(runtime, roadmap_id) is S.generating_content
    runtime.llm = OfflineProvider(failure_rate=1.0)
    assert await workflow.generate_content(runtime, roadmap_id) is S.failed
    state, error, _, _ = _row(database_url, roadmap_id)
    assert state == "failed"
    assert "tutorial for" in error
    assert recorder.status_when_failure_announced == "failed"


async def test_queueing_failure_after_design_is_recorded(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)

    async def broker_down(job: str, roadmap_id: uuid.UUID, *args: Any) -> None:
        raise ConnectionError("Error 111 connecting to redis")

    runtime = _runtime(configured, recorder)
    runtime.enqueue = broker_down
    roadmap_id = await _new()
    assert await workflow.generate_roadmap(runtime, roadmap_id) is S.failed
    assert _row(database_url, roadmap_id)[:2] == (
        "failed",
        "curriculum: Error 111 connecting to redis",
    )


async def test_a_completed_roadmap_is_never_marked_failed_by_a_late_duplicate(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new()
    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(session, roadmap_id, status=S.completed)
    await workflow.fail(_runtime(configured, recorder), roadmap_id, "content", "late failure")
    assert _row(database_url, roadmap_id)[:2] == ("completed", None)
