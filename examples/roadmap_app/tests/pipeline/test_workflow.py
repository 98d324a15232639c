"""The workflow's status transitions, and its failure rule: state first, notification second."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest
from roadmap_testkit import query

import loopsafe.db
from roadmap_app import repositories
from roadmap_app.config import Settings
from roadmap_app.llm import LLMError, LLMProvider, OfflineProvider, Prompt
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
    configured: Settings, database_url: str, client: httpx.AsyncClient
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
    # The rejected curriculum is kept, as designed, and the API lists both versions with the
    # feedback that produced the second.
    body = (await client.get(f"/api/v1/roadmaps/{roadmap_id}", params={"content": False})).json()
    assert body["curriculum_version"] == 2
    first, second = body["curriculum_versions"]
    assert (first["version"], first["feedback"], second["version"], second["feedback"]) == (
        1,
        None,
        2,
        "more projects",
    )
    assert second["concepts"] == len(titles)
    assert first["created_at"] <= second["created_at"]
    assert first["title"] == second["title"] == body["title"]
    kept = query(
        database_url,
        "SELECT version, jsonb_path_query_array(stages, '$[*].modules[*].concepts[*].title')"
        " FROM curriculum_versions WHERE roadmap_id = %(i)s ORDER BY version",
        {"i": roadmap_id},
    )
    assert [v for v, _ in kept] == [1, 2]
    assert sorted(kept[1][1]) == sorted(titles)
    assert first["concepts"] == len(kept[0][1])
    assert not any(t.startswith("more projects") for t in kept[0][1])

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
    # Named after the step that failed (it used to say `curriculum`, the job's last step).
    assert error.startswith(
        "intent: intent analysis failed after 3 attempts: offline provider: simulated failure"
    )
    assert recorder.status_when_failure_announced == "failed"  # state first
    assert recorder.events[-1] == {
        "type": "status",
        "status": "failed",
        "error": error,
        "step": "intent",
    }
    assert recorder.logs[-1][:2] == ("intent", "failed")
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


async def test_queueing_failure_after_design_leaves_the_roadmap_to_the_sweeper(
    configured: Settings, database_url: str
) -> None:
    """A broker that is down when the curriculum is ready (a Redis restart) neither fails the
    roadmap nor loses it: it stays in flight, unleased, and the sweeper queues its content."""
    recorder = Recorder(database_url)

    async def broker_down(job: str, roadmap_id: uuid.UUID, *args: Any) -> None:
        raise ConnectionError("Error 111 connecting to redis")

    runtime = _runtime(configured, recorder)
    runtime.enqueue = broker_down
    roadmap_id = await _new()
    assert await workflow.generate_roadmap(runtime, roadmap_id) is S.generating_content
    assert _row(database_url, roadmap_id) == ("generating_content", None, 1, True)
    assert _lease(database_url, roadmap_id) == (None, None)
    step, status, detail = recorder.logs[-1]
    assert (step, status) == ("curriculum", "queue_deferred")
    assert detail == {
        "job": "generate_content",
        "error": "curriculum: Error 111 connecting to redis",
    }
    assert not [e for e in recorder.events if e.get("status") == "failed"]

    # The broker is back; the roadmap has gone a lease period untouched.
    runtime.enqueue = recorder.enqueue
    query(database_url, "UPDATE roadmaps SET updated_at = now() - interval '1 hour'"
          " WHERE id = %(i)s RETURNING id", {"i": roadmap_id})  # fmt: skip
    assert roadmap_id in await workflow.recover_abandoned(runtime)
    assert ("resume_from_checkpoint", (roadmap_id,)) in recorder.jobs
    assert await workflow.generate_content(runtime, roadmap_id, step="resume") is S.completed


async def test_queueing_failure_after_approval_leaves_the_roadmap_to_the_sweeper(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new(review=True)
    runtime = _runtime(configured, recorder)
    assert await workflow.generate_roadmap(runtime, roadmap_id) is S.human_review_pending
    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(
            session, roadmap_id, status=S.review_submitted, review_approved=True
        )

    async def broker_down(job: str, roadmap_id: uuid.UUID, *args: Any) -> None:
        raise ConnectionError("Error 111 connecting to redis")

    runtime.enqueue = broker_down
    assert await workflow.resume_after_review(runtime, roadmap_id, True, None) is (
        S.generating_content
    )
    assert _row(database_url, roadmap_id) == ("generating_content", None, 1, True)
    assert recorder.logs[-1][:2] == ("review", "queue_deferred")


async def test_a_completed_roadmap_is_never_marked_failed_by_a_late_duplicate(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new()
    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(session, roadmap_id, status=S.completed)
    await workflow.fail(_runtime(configured, recorder), roadmap_id, "content", "late failure")
    assert _row(database_url, roadmap_id)[:2] == ("completed", None)


# --- Job ownership: a lease on the roadmap row, checked on every write ---------------------


async def _content_ready(settings: Settings, recorder: Recorder) -> uuid.UUID:
    """A roadmap designed without review, its content job queued but not run."""
    roadmap_id = await _new(goal="Learn Haskell")
    assert await workflow.generate_roadmap(_runtime(settings, recorder), roadmap_id) is (
        S.generating_content
    )
    return roadmap_id


def _lease(database_url: str, roadmap_id: uuid.UUID) -> tuple[Any, ...]:
    (row,) = query(
        database_url,
        "SELECT lease_owner, lease_expires_at > now() FROM roadmaps WHERE id = %(i)s",
        {"i": roadmap_id},
    )
    return tuple(row)


def _content_rows(database_url: str, roadmap_id: uuid.UUID) -> tuple[int, int]:
    """(content rows, concepts with content) of the roadmap."""
    (row,) = query(
        database_url,
        "SELECT count(*), count(DISTINCT concept_id) FROM concept_content WHERE roadmap_id = %(i)s",
        {"i": roadmap_id},
    )
    return int(row[0]), int(row[1])


class StealingProvider(OfflineProvider):
    """Another job takes the roadmap's lease (as after an expiry) while this one generates."""

    def __init__(self, roadmap_id: uuid.UUID) -> None:
        super().__init__()
        self.roadmap_id = roadmap_id
        self.thief = uuid.uuid4()

    async def complete_json(self, prompt: Any) -> dict[str, Any]:
        if self.calls:
            return await super().complete_json(prompt)
        async with loopsafe.db.session() as session:
            await repositories.update_roadmap(
                session,
                self.roadmap_id,
                lease_owner=self.thief,
                lease_expires_at=repositories.lease_until(3600),
            )
        return await super().complete_json(prompt)


async def test_a_job_that_lost_its_lease_writes_nothing_and_never_announces_completed(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _content_ready(configured, recorder)
    llm = StealingProvider(roadmap_id)
    assert await workflow.generate_content(_runtime(configured, recorder, llm), roadmap_id) is None
    assert _row(database_url, roadmap_id)[0] == "generating_content"
    assert _lease(database_url, roadmap_id) == (llm.thief, True)  # the new owner keeps it
    assert _content_rows(database_url, roadmap_id) == (0, 0)  # the fenced writes were refused
    assert not [e for e in recorder.events if e.get("status") in ("completed", "failed")]
    assert recorder.logs[-1][:2] == ("content", "skipped")
    assert "lost its lease" in recorder.logs[-1][2]["why"]


async def test_a_second_job_is_a_logged_no_op_while_the_first_holds_the_lease(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _content_ready(configured, recorder)
    owner = uuid.uuid4()
    query(
        database_url,
        "UPDATE roadmaps SET lease_owner = %(o)s, lease_expires_at = now() + interval '1 minute'"
        " WHERE id = %(i)s RETURNING id",
        {"o": owner, "i": roadmap_id},
    )
    llm = OfflineProvider()
    runtime = _runtime(configured, recorder, llm)
    assert await workflow.generate_content(runtime, roadmap_id, step="resume") is None
    assert llm.calls == 0
    assert recorder.logs[-1][:2] == ("resume", "skipped")
    assert _lease(database_url, roadmap_id) == (owner, True)

    # Once that lease has expired (its worker died) a job may take over, and finishes.
    query(
        database_url,
        "UPDATE roadmaps SET lease_expires_at = now() - interval '1 second' WHERE id = %(i)s"
        " RETURNING id",
        {"i": roadmap_id},
    )
    assert await workflow.generate_content(runtime, roadmap_id, step="resume") is S.completed
    assert _lease(database_url, roadmap_id) == (None, None)  # released with the last write
    assert [e["status"] for e in recorder.events if e.get("status") == "completed"] == ["completed"]


async def test_a_redelivered_generate_roadmap_never_redesigns_over_saved_content(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _content_ready(configured, recorder)
    runtime = _runtime(configured, recorder, OfflineProvider(failure_rate=1.0))
    assert await workflow.generate_content(runtime, roadmap_id) is S.failed
    runtime.llm = OfflineProvider()
    assert await workflow.generate_content(runtime, roadmap_id) is S.completed
    saved = _content_rows(database_url, roadmap_id)
    query(database_url, "UPDATE roadmaps SET status = 'failed' WHERE id = %(i)s RETURNING id",
          {"i": roadmap_id})  # fmt: skip
    llm = OfflineProvider()
    runtime.llm = llm
    assert await workflow.generate_roadmap(runtime, roadmap_id) is None
    assert llm.calls == 0
    assert _row(database_url, roadmap_id)[2] == 1  # curriculum version unchanged
    assert _content_rows(database_url, roadmap_id) == saved


async def test_replacing_a_curriculum_with_saved_content_is_refused_unless_asked_for(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _content_ready(configured, recorder)
    assert await workflow.generate_content(_runtime(configured, recorder), roadmap_id) is (
        S.completed
    )
    saved, _ = _content_rows(database_url, roadmap_id)
    plan = [{"title": "Only", "modules": [{"title": "M", "concepts": [{"title": "C"}]}]}]
    with pytest.raises(
        repositories.ContentExistsError,
        match=rf"already has content for {saved} concepts; replacing its curriculum would delete",
    ):
        async with loopsafe.db.session() as session:
            await repositories.replace_curriculum(session, roadmap_id, plan)
    assert _content_rows(database_url, roadmap_id) == (saved, saved)
    async with loopsafe.db.session() as session:
        assert (
            await repositories.replace_curriculum(session, roadmap_id, plan, discard_content=True)
            == 1
        )
    assert _content_rows(database_url, roadmap_id) == (0, 0)


# --- One bad concept does not sink the job ----------------------------------------------------


class OneBadConcept(OfflineProvider):
    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad
        self.concepts: list[str] = []

    async def complete_json(self, prompt: Any) -> dict[str, Any]:
        if prompt.kind == "tutorial":
            self.concepts.append(str(prompt.context["concept"]))
        if prompt.context.get("concept") == self.bad:
            raise LLMError("the model refuses this one")
        return await super().complete_json(prompt)


async def test_a_bad_concept_is_listed_the_rest_finish_and_resume_retries_only_it(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _content_ready(configured, recorder)
    (bad_id, bad_slug, bad_title), *_ = query(
        database_url,
        "SELECT id, slug, title FROM concepts WHERE roadmap_id = %(i)s ORDER BY id DESC LIMIT 1",
        {"i": roadmap_id},
    )
    total = int(query(database_url, "SELECT count(*) FROM concepts WHERE roadmap_id = %(i)s",
                      {"i": roadmap_id})[0][0])  # fmt: skip
    runtime = _runtime(configured, recorder, OneBadConcept(bad_title))
    assert await workflow.generate_content(runtime, roadmap_id) is S.failed
    (status, error, failed), *_ = query(
        database_url,
        "SELECT status, error, failed_concepts FROM roadmaps WHERE id = %(i)s",
        {"i": roadmap_id},
    )
    assert status == "failed"
    assert error.startswith(f"content: 1 of {total} concepts failed ({bad_slug}); first reason:")
    assert error.endswith("POST /resume retries only these")
    assert [(f["concept_id"], f["slug"]) for f in failed] == [(bad_id, bad_slug)]
    assert "the model refuses this one" in failed[0]["reason"]
    assert _content_rows(database_url, roadmap_id) == (total - 1, total - 1)
    assert _lease(database_url, roadmap_id) == (None, None)

    retry = OneBadConcept("no such concept")
    runtime.llm = retry
    assert await workflow.generate_content(runtime, roadmap_id, step="resume") is S.completed
    assert retry.concepts == [bad_title]
    assert _content_rows(database_url, roadmap_id) == (total, total)
    assert query(database_url, "SELECT failed_concepts FROM roadmaps WHERE id = %(i)s",
                 {"i": roadmap_id}) == [([],)]  # fmt: skip


# --- Failure layering ---------------------------------------------------------------------------


def _execute(database_url: str, sql: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.encode())


async def test_when_the_failure_cannot_be_recorded_the_job_still_notifies_and_raises_the_original(
    configured: Settings, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new(goal="Learn Erlang")
    # The database itself refuses to mark this roadmap failed: every retry of the write fails.
    constraint = f"no_failed_{roadmap_id.hex}"
    _execute(database_url, f"ALTER TABLE roadmaps ADD CONSTRAINT {constraint} CHECK "
             f"(id <> '{roadmap_id}' OR status <> 'failed') NOT VALID")  # fmt: skip
    try:
        runtime = _runtime(configured, recorder, OfflineProvider(failure_rate=1.0))
        with pytest.raises(LLMError, match="intent analysis failed after 3 attempts"):
            await workflow.generate_roadmap(runtime, roadmap_id)
    finally:
        _execute(database_url, f"ALTER TABLE roadmaps DROP CONSTRAINT {constraint}")
    assert _row(database_url, roadmap_id)[0] == "analyzing"  # nothing was written...
    assert recorder.events[-1]["status"] == "failed"  # ...but the listeners were told
    assert recorder.logs[-1][:2] == ("intent", "failed")
    (record,) = [r for r in caplog.records if "failure_not_recorded" in r.getMessage()]
    assert (record.task, record.roadmap) == ("intent", str(roadmap_id))  # type: ignore[attr-defined]
    assert record.error.startswith("intent: intent analysis failed")  # type: ignore[attr-defined]
    assert "CheckViolation" in record.write_error  # type: ignore[attr-defined]


# --- The sweeper --------------------------------------------------------------------------------


async def test_the_sweeper_requeues_an_abandoned_job_once_and_leaves_live_ones_alone(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    dead = await _content_ready(configured, recorder)
    alive = await _content_ready(configured, recorder)
    for roadmap_id, expiry in ((dead, "- interval '1 second'"), (alive, "+ interval '1 minute'")):
        query(database_url, "UPDATE roadmaps SET lease_owner = gen_random_uuid(),"
              f" lease_expires_at = now() {expiry} WHERE id = %(i)s RETURNING id",
              {"i": roadmap_id})  # fmt: skip
    recorder.jobs.clear()
    runtime = _runtime(configured, recorder)
    recovered = await workflow.recover_abandoned(runtime)
    assert dead in recovered
    assert alive not in recovered
    assert ("resume_from_checkpoint", (dead,)) in recorder.jobs
    assert _lease(database_url, dead) == (None, None)
    # Open pages hear that each job is being recovered (and which), not silence. (The database
    # is the session's: other tests' abandoned roadmaps are swept too.)
    recovering = [e for e in recorder.events if e["type"] == "recovering"]
    assert len(recovering) == len(recovered)
    assert {"type": "recovering", "status": "generating_content",
            "job": "resume_from_checkpoint"} in recovering  # fmt: skip
    again = await workflow.recover_abandoned(runtime)
    assert dead not in again  # once
    assert len([e for e in recorder.events if e["type"] == "recovering"]) == len(recovered) + len(
        again
    )
    assert await workflow.generate_content(runtime, dead, step="resume") is S.completed


# --- Cancel ------------------------------------------------------------------------------------


class CancellingProvider(OfflineProvider):
    """Slow calls; the roadmap's user cancels it (as `POST …/cancel` does) after `after` calls."""

    def __init__(self, roadmap_id: uuid.UUID, after: int) -> None:
        super().__init__(latency_ms=300)
        self.roadmap_id = roadmap_id
        self.after = after
        self.calls_after_cancel = 0
        self.cancelled = False

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        if self.cancelled:
            self.calls_after_cancel += 1
        answer = await super().complete_json(prompt)
        if self.calls == self.after and not self.cancelled:
            async with loopsafe.db.session() as session:
                await repositories.update_roadmap(session, self.roadmap_id, status=S.cancelled)
            self.cancelled = True
        return answer


async def test_cancel_during_content_stops_the_job_keeps_saved_content_and_resume_finishes_it(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _content_ready(configured, recorder)
    total = int(query(database_url, "SELECT count(*) FROM concepts WHERE roadmap_id = %(i)s",
                      {"i": roadmap_id})[0][0])  # fmt: skip
    # Three calls per concept: a cancel after 12 calls leaves most concepts to do.
    llm = CancellingProvider(roadmap_id, after=12)
    runtime = _runtime(configured, recorder, llm)
    assert await workflow.generate_content(runtime, roadmap_id) is S.cancelled
    # The job stopped within a cancel check or two of the request, not after every concept.
    assert llm.calls < 3 * total // 2
    assert _row(database_url, roadmap_id)[0] == "cancelled"  # not `failed`, not `completed`
    assert _lease(database_url, roadmap_id) == (None, None)  # nothing left running
    saved, distinct = _content_rows(database_url, roadmap_id)
    assert saved == distinct
    assert 0 < saved < total
    assert recorder.logs[-1][:2] == ("content", "cancelled")
    assert recorder.logs[-1][2] == {"saved": saved, "concepts": total}
    assert not [e for e in recorder.events if e.get("status") in ("completed", "failed")]
    announced = {e["concept_id"] for e in recorder.events if e["type"] == "concept_saved"}
    assert len(announced) == saved  # every saved concept was announced, nothing more

    # A re-delivered content job leaves a cancelled roadmap alone.
    assert await workflow.generate_content(runtime, roadmap_id) is None
    # Resume (as the API does it) generates only what is missing: no duplicate, nothing lost.
    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(session, roadmap_id, status=S.generating_content)
    runtime.llm = OfflineProvider()
    assert await workflow.generate_content(runtime, roadmap_id, step="resume") is S.completed
    assert _content_rows(database_url, roadmap_id) == (total, total)


async def test_cancel_during_curriculum_design_keeps_the_roadmap_cancelled(
    configured: Settings, database_url: str
) -> None:
    recorder = Recorder(database_url)
    roadmap_id = await _new(goal="Learn Erlang")
    # The intent call is the first; the cancel lands while the curriculum is being designed.
    llm = CancellingProvider(roadmap_id, after=1)
    assert await workflow.generate_roadmap(_runtime(configured, recorder, llm), roadmap_id) is (
        S.cancelled
    )
    assert _row(database_url, roadmap_id)[0] == "cancelled"
    assert _lease(database_url, roadmap_id) == (None, None)
    assert recorder.jobs == []  # no content job queued
    assert recorder.logs[-1][:2] == ("generate_roadmap", "cancelled")
    assert not [e for e in recorder.events if e.get("status") in ("failed", "generating_content")]
