"""The pipeline end to end through the HTTP API, with real Celery prefork workers and servers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from roadmap_testkit import (
    FULL_TIER,
    SLOW_TIER_REASON,
    Stack,
    make_env,
    query,
    read_events,
    wait_for,
    wait_for_status,
)

from loopsafe.testing import EmbeddedRedis
from roadmap_app.demo import iter_sse
from roadmap_app.llm import OfflineProvider, Prompt
from roadmap_app.models import RoadmapStatus

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]

ORDER = [s.value for s in RoadmapStatus]


def _submit(stack: Stack, goal: str, **extra: Any) -> str:
    with stack.client() as client:
        response = client.post("/api/v1/roadmaps", json={"goal": goal, **extra})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    return str(body["task_id"])


def _concepts(database_url: str, roadmap_id: str) -> dict[int, str]:
    rows = query(
        database_url, "SELECT id, title FROM concepts WHERE roadmap_id = %(r)s", {"r": roadmap_id}
    )
    return {row[0]: row[1] for row in rows}


def _content_rows(database_url: str, roadmap_id: str) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        "SELECT concept_id, created_at FROM concept_content WHERE roadmap_id = %(r)s ORDER BY concept_id",
        {"r": roadmap_id},
    )


def _log_steps(database_url: str, roadmap_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = query(
        database_url,
        "SELECT step, status, detail FROM execution_logs WHERE roadmap_id = %(r)s ORDER BY id",
        {"r": roadmap_id},
    )
    return [(row[0], row[1], row[2]) for row in rows]


def test_submit_runs_to_completed_with_content_for_every_concept_and_ordered_events(
    stack: Stack, database_url: str
) -> None:
    roadmap_id = _submit(stack, "Learn Python for data analysis", level="beginner", weekly_hours=6)
    with stack.client() as client:
        events = read_events(client, roadmap_id)
        roadmap = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()

    # The stream starts with the current state and ends with the final status.
    first = events[0]
    assert first["type"] == "snapshot"
    assert events[-1]["type"] == "status"
    assert events[-1]["status"] == "completed"
    statuses = [e["status"] for e in events if e["type"] in ("snapshot", "status")]
    assert [ORDER.index(s) for s in statuses] == sorted(ORDER.index(s) for s in statuses)

    concepts = _concepts(database_url, roadmap_id)
    assert 20 <= len(concepts) <= 40
    saved = [e for e in events if e["type"] == "concept_saved"]
    # Progress counts up one by one from where the snapshot was, each concept exactly once.
    assert [e["done"] for e in saved] == list(range(first["done"] + 1, len(concepts) + 1))
    assert len({e["concept_id"] for e in saved}) == len(saved)
    assert {e["concept_id"] for e in saved} <= set(concepts)
    for event in saved:  # per concept: tutorial → resources → quiz, then saved
        steps = [
            e["step"]
            for e in events[: events.index(event)]
            if e["type"] == "concept_step" and e["concept_id"] == event["concept_id"]
        ]
        # (A concept already under way when the snapshot was taken shows only its last steps.)
        assert steps in (["tutorial", "resources", "quiz"], ["resources", "quiz"], ["quiz"], [])

    # The API returns the whole roadmap with content for every concept.
    assert roadmap["status"] == "completed"
    assert roadmap["error"] is None
    assert roadmap["progress"] == {"done": len(concepts), "total": len(concepts), "percent": 100}
    api_concepts = [c for s in roadmap["stages"] for m in s["modules"] for c in m["concepts"]]
    assert len(api_concepts) == len(concepts)
    for concept in api_concepts:
        content = concept["content"]
        assert concept["has_content"]
        assert content["tutorial"].startswith(f"## {concept['title']}")
        assert content["resources"]
        assert all(r["url"].startswith("https://") for r in content["resources"])
        assert len(content["quiz"]) == 3
    assert len(_content_rows(database_url, roadmap_id)) == len(concepts)
    # Execution logs arrive through the `logs` queue (in any order), soon after their step.
    wait_for(lambda: len(_log_steps(database_url, roadmap_id)) >= 3, timeout=15, what="3 logs")
    steps = sorted((step, status) for step, status, _ in _log_steps(database_url, roadmap_id))
    assert steps == [("content", "succeeded"), ("curriculum", "succeeded"), ("intent", "succeeded")]


def test_a_late_subscriber_gets_the_current_state_first(stack: Stack) -> None:
    roadmap_id = _submit(stack, "Learn SQL", weekly_hours=3)
    with stack.client() as client:
        wait_for_status(client, roadmap_id, "completed")
        events = read_events(client, roadmap_id)
    assert len(events) == 1
    (snapshot,) = events
    assert snapshot["type"] == "snapshot"
    assert snapshot["status"] == "completed"
    assert snapshot["done"] == snapshot["total"] > 0
    assert sum(s["done"] for s in snapshot["stages"]) == snapshot["total"]


def test_review_approve_generates_content_only_after_approval_with_every_event_in_order(
    stack: Stack, database_url: str
) -> None:
    roadmap_id = _submit(stack, "Learn Rust", level="intermediate", review=True)
    with stack.client() as client, stack.client() as reviewer:
        pending = wait_for_status(client, roadmap_id, "human_review_pending", "failed")
        assert pending["status"] == "human_review_pending"
        total = pending["progress"]["total"]
        assert total >= 20
        assert _content_rows(database_url, roadmap_id) == []

        # Subscribed while the roadmap waits, so every event of the content step is seen.
        events: list[dict[str, Any]] = []
        with client.stream("GET", f"/api/v1/roadmaps/{roadmap_id}/events") as stream:
            lines = iter_sse(stream.iter_lines())
            events.append(next(lines))
            response = reviewer.post(
                f"/api/v1/roadmaps/{roadmap_id}/review", json={"approve": True}
            )
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "review_submitted"
            again = reviewer.post(f"/api/v1/roadmaps/{roadmap_id}/review", json={"approve": True})
            assert again.status_code == 409
            assert (
                "only a roadmap in 'human_review_pending' can be reviewed" in again.json()["detail"]
            )
            events.extend(lines)
        done = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()

    assert done["status"] == "completed"
    assert done["curriculum_version"] == 1
    assert len(_content_rows(database_url, roadmap_id)) == total
    assert events[0]["type"] == "snapshot"
    assert events[0]["status"] == "human_review_pending"
    assert events[0]["done"] == 0
    assert events[0]["total"] == total
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["review_submitted", "generating_content", "completed"]
    saved = [e for e in events if e["type"] == "concept_saved"]
    assert [e["done"] for e in saved] == list(range(1, total + 1))
    assert sorted(e["concept_id"] for e in saved) == sorted(_concepts(database_url, roadmap_id))
    for event in saved:
        steps = [
            e["step"]
            for e in events[: events.index(event)]
            if e["type"] == "concept_step" and e["concept_id"] == event["concept_id"]
        ]
        assert steps == ["tutorial", "resources", "quiz"]
    stage_done: dict[int, int] = {}
    for event in saved:  # per-stage counters also count up one by one
        stage_done[event["stage"]] = stage_done.get(event["stage"], 0) + 1
        assert event["stage_done"] == stage_done[event["stage"]] <= event["stage_total"]


def test_review_reject_regenerates_the_curriculum_from_feedback(
    stack: Stack, database_url: str
) -> None:
    roadmap_id = _submit(stack, "Learn machine learning", review=True)
    with stack.client() as client:
        first = wait_for_status(client, roadmap_id, "human_review_pending", "failed")
        assert first["curriculum_version"] == 1
        old_ids = set(_concepts(database_url, roadmap_id))

        response = client.post(
            f"/api/v1/roadmaps/{roadmap_id}/review",
            json={"approve": False, "feedback": "More hands-on projects"},
        )
        assert response.status_code == 202, response.text
        second = wait_for(
            lambda: (
                (body := client.get(f"/api/v1/roadmaps/{roadmap_id}").json())["curriculum_version"]
                == 2
                and body["status"] == "human_review_pending"
                and body
            ),
            timeout=30,
            what="a second curriculum awaiting review",
        )
        assert second["feedback"] == "More hands-on projects"
        titles = [c["title"] for s in second["stages"] for m in s["modules"] for c in m["concepts"]]
        assert any("More hands-on projects" in t for t in titles)
        new_ids = set(_concepts(database_url, roadmap_id))
        assert new_ids.isdisjoint(old_ids)  # the old curriculum is gone, not merged

        assert (
            client.post(f"/api/v1/roadmaps/{roadmap_id}/review", json={"approve": True}).status_code
            == 202
        )
        done = wait_for_status(client, roadmap_id, "completed", "failed")
    assert done["status"] == "completed"
    saved = {row[0] for row in _content_rows(database_url, roadmap_id)}
    assert saved == new_ids
    # Execution logs travel through the logs queue: wait for them rather than read them once.
    wait_for(
        lambda: (
            {("review", "rejected"), ("review", "approved")}
            <= {(s, st) for s, st, _ in _log_steps(database_url, roadmap_id)}
        ),
        timeout=15,
        what="both reviews' execution logs",
    )


@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_crash_of_the_content_worker_is_recovered_without_a_human_and_without_duplicates(
    stack: Stack, database_url: str
) -> None:
    # A slow LLM, so the worker is certainly killed in the middle of the content step.
    slow = stack.start_worker(
        "content", ["content"], LLM_LATENCY_MS="150", LLM_JITTER_MS="20", LLM_CONCURRENCY="3"
    )
    roadmap_id = _submit(stack, "Learn Kubernetes")
    wait_for(
        lambda: len(_content_rows(database_url, roadmap_id)) >= 4,
        timeout=60,
        what="4 saved concepts",
    )
    slow.kill()  # SIGKILL to the worker and its prefork children: no cleanup of any kind
    killed_at = time.monotonic()

    before = _content_rows(database_url, roadmap_id)
    concepts = _concepts(database_url, roadmap_id)
    assert 0 < len(before) < len(concepts)
    with stack.client() as client:
        # The dead job still holds its lease: a resume now would start a second job.
        response = client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")
        assert response.status_code in (409, 202), response.text
        stack.start_worker("content", ["content"])
        # No resume pressed: the sweeper notices the expired lease and re-queues the job.
        done = wait_for_status(client, roadmap_id, "completed", "failed")
    recovered_after = time.monotonic() - killed_at
    assert done["status"] == "completed", done["error"]

    after = _content_rows(database_url, roadmap_id)
    assert [row[0] for row in after] == sorted(concepts)  # every concept, each exactly once
    assert set(before) <= set(after)  # rows saved before the crash are the same rows
    assert query(
        database_url, "SELECT lease_owner FROM roadmaps WHERE id = %(r)s", {"r": roadmap_id}
    ) == [(None,)]

    def finished_jobs() -> list[dict[str, Any]]:
        return [
            d
            for s, st, d in _log_steps(database_url, roadmap_id)
            if s in ("content", "resume") and st == "succeeded"
        ]

    # The job's execution log may land after `completed` is read, as above.
    finished = wait_for(finished_jobs, timeout=15, what="the finished job's execution log")
    assert len(finished) == 1  # exactly one job completed the roadmap
    assert finished[0]["skipped"] >= len(before)
    print(f"recovered {roadmap_id} {recovered_after:.1f} s after SIGKILL")


@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_llm_failing_every_call_marks_the_roadmap_failed_with_the_reason_then_resume_recovers(
    stack: Stack, database_url: str
) -> None:
    stack.start_worker("content", ["content"], LLM_FAILURE_RATE="1.0")
    roadmap_id = _submit(stack, "Learn Go")
    with stack.client() as client:
        events = read_events(client, roadmap_id)
        failed = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()
    assert failed["status"] == "failed"
    assert "failed after 3 attempts" in failed["error"]
    assert "simulated failure" in failed["error"]
    assert "LLM_FAILURE_RATE=1" in failed["error"]
    assert events[-1]["type"] == "status"
    assert events[-1]["status"] == "failed"
    assert events[-1]["error"] == failed["error"]
    assert _content_rows(database_url, roadmap_id) == []
    wait_for(
        lambda: any(st == "failed" for s, st, _ in _log_steps(database_url, roadmap_id)),
        timeout=15,
        what="the failure's execution log",
    )

    stack.start_worker("content", ["content"])
    with stack.client() as client:
        assert client.post(f"/api/v1/roadmaps/{roadmap_id}/resume").status_code == 202
        done = wait_for_status(client, roadmap_id, "completed", "failed")
    assert done["status"] == "completed"
    assert done["error"] is None


@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_roadmap_completes_when_redis_stops_during_generation(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with EmbeddedRedis() as redis:
        env = make_env(
            database_url,
            redis.url,
            "redisdown:",
            LLM_LATENCY_MS="100",
            LLM_JITTER_MS="10",
            LLM_CONCURRENCY="3",
        )
        private = Stack(env, tmp_path_factory.mktemp("redis-down"), name="redisdown")
        try:
            private.start_api()
            private.start_worker("all", ["workflow", "content", "logs"])
            private.wait_ready()
            roadmap_id = _submit(private, "Learn Haskell")
            wait_for(
                lambda: len(_content_rows(database_url, roadmap_id)) >= 3,
                timeout=60,
                what="content",
            )
            redis.stop()  # broker and pub/sub gone mid-generation

            with private.client() as client:
                done = wait_for_status(client, roadmap_id, "completed", "failed", timeout=90)
                assert done["status"] == "completed", done["error"]
                concepts = _concepts(database_url, roadmap_id)
                assert [r[0] for r in _content_rows(database_url, roadmap_id)] == sorted(concepts)
                # Without the `logs` queue the execution log is written directly.
                wait_for(
                    lambda: (
                        ("content", "succeeded")
                        in [(s, st) for s, st, _ in _log_steps(database_url, roadmap_id)]
                    ),
                    timeout=30,
                    what="the content step's execution log",
                )

                health = client.get("/health")
                assert health.status_code == 200
                assert health.json()["status"] == "degraded"
                assert health.json()["redis"]["ok"] is False
                assert health.json()["database"]["ok"] is True
                # The event stream falls back to the database.
                events = read_events(client, roadmap_id)
                assert [e["type"] for e in events] == ["snapshot"]
                assert events[0]["status"] == "completed"
            redis.start()
        finally:
            private.stop()


def _curriculum_titles(goal: str) -> list[str]:
    """The concept titles the offline provider designs for `goal` (it is deterministic)."""
    prompt = Prompt("curriculum", "", "", {"goal": goal, "level": "beginner", "version": 1})
    answer = asyncio.run(OfflineProvider().complete_json(prompt))
    return [c["title"] for s in answer["stages"] for m in s["modules"] for c in m["concepts"]]


def _count(database_url: str, sql: str, ids: list[str]) -> int:
    return int(query(database_url, sql, {"i": ids})[0][0])


def _status(database_url: str, roadmap_id: str) -> str:
    return str(
        query(database_url, "SELECT status FROM roadmaps WHERE id = %(r)s", {"r": roadmap_id})[0][0]
    )


def _queued_tasks(redis_url: str, prefix: str) -> int:
    """Tasks waiting in the Celery queues under `prefix` (each queue is a Redis list)."""
    import redis

    with redis.Redis.from_url(redis_url) as client:
        keys = [k for k in client.scan_iter(match=f"{prefix}*") if client.type(k) == b"list"]
        return sum(int(client.llen(k)) for k in keys)


def _live_lease(database_url: str, roadmap_id: str) -> Any:
    """The lease token of the job running the roadmap now, or None."""
    rows = query(
        database_url,
        "SELECT lease_owner FROM roadmaps WHERE id = %(r)s AND lease_expires_at > now()",
        {"r": roadmap_id},
    )
    return rows[0][0] if rows else None


class _Recovery:
    """How long each fault took to recover from, by kind."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}

    def add(self, kind: str, started: float) -> None:
        self.seconds.setdefault(kind, []).append(round(time.monotonic() - started, 1))


@pytest.fixture
def private_database_url(postgres_url: str) -> Iterator[str]:
    """A migrated database of its own: the session stack's sweeper (same database, another
    broker) would otherwise take over this deployment's abandoned jobs, and the reverse."""
    from sqlalchemy.engine import make_url

    from roadmap_app.__main__ import migrate_database

    name = f"roadmap_faults_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        migrate_database(url)
        yield url
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
# 106 s of work on a machine at load 12 (2 cores): 120 s killed it in its teardown.
@pytest.mark.timeout(300)
def test_faults_during_several_roadmaps_leave_every_one_completed_or_failed_as_injected(
    private_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """While several roadmaps generate, on a private Redis: tasks delivered twice (`generate_roadmap`,
    `generate_content`, `resume_from_checkpoint`), resume pressed while each job runs, a
    pg_terminate_backend storm, Redis restarted (broker and pub/sub, its queues lost), the content
    worker SIGKILLed, and permanent LLM failures injected for three concepts. Afterwards, with no
    human action: every roadmap is `completed`, or `failed` listing exactly its broken concepts;
    one content row per other concept and nothing else; no lease left; one job finished each."""
    from roadmap_app.config import Settings
    from roadmap_app.jobs import create_celery_app, send_job

    database_url = private_database_url

    goals = ["Learn Elixir", "Learn OCaml", "Learn Zig"]
    late_goal = "Learn Julia"  # submitted right after Redis comes back
    # Titles naming their topic, so each breaks a concept of that roadmap only.
    ocaml = [t for t in _curriculum_titles("Learn OCaml") if "OCaml" in t]
    zig = [t for t in _curriculum_titles("Learn Zig") if "Zig" in t]
    broken_titles = {"Learn OCaml": {ocaml[0], ocaml[-1]}, "Learn Zig": {zig[len(zig) // 2]}}
    database = query(database_url, "SELECT current_database()")[0][0]
    # Slow enough that every fault below lands while the roadmaps generate (~14 s each, unhurt).
    slow = {"LLM_LATENCY_MS": "300", "LLM_JITTER_MS": "30", "LLM_CONCURRENCY": "2"}
    faults = dict.fromkeys(
        (
            "duplicate_tasks",
            "resume_pressed",
            "resume_409",
            "backends_terminated",
            "redis_restarts",
            "sigkills",
        ),
        0,
    )
    recovery = _Recovery()
    in_flight: list[int] = []  # roadmaps still generating when each fault hit
    started = time.monotonic()
    with EmbeddedRedis() as redis:
        env = make_env(
            database_url,
            redis.url,
            "faults:",
            LLM_FAIL_CONCEPTS=",".join(sorted(set().union(*broken_titles.values()))),
        )
        private = Stack(env, tmp_path_factory.mktemp("faults"), name="faults")
        celery = create_celery_app(Settings.from_env(env))
        events: list[dict[str, Any]] = []
        try:
            private.start_api()
            # A slow curriculum design, so Redis can be down while one is designed.
            private.start_worker(
                "workflow", ["workflow", "logs"], beat=True, LLM_LATENCY_MS="700", LLM_JITTER_MS="0"
            )
            private.start_worker("content", ["content"], concurrency=3, **slow)
            private.wait_ready()
            ids = [_submit(private, goal) for goal in goals]
            goal_of = dict(zip(ids, goals, strict=True))

            def saved() -> int:
                return _count(
                    database_url,
                    "SELECT count(*) FROM concept_content WHERE roadmap_id = ANY(%(i)s::uuid[])",
                    ids,
                )

            def unfinished() -> int:
                return _count(
                    database_url,
                    "SELECT count(*) FROM roadmaps WHERE id = ANY(%(i)s::uuid[])"
                    " AND status NOT IN ('completed', 'failed')",
                    ids,
                )

            def duplicate_and_resume() -> None:
                """Deliver each running job's tasks again and press its resume button."""
                running = {r: _live_lease(database_url, r) for r in ids}
                running = {r: owner for r, owner in running.items() if owner is not None}
                in_flight.append(len(running))
                for roadmap_id in running:
                    for job in ("generate_roadmap", "generate_content", "resume_from_checkpoint"):
                        send_job(celery, job, roadmap_id)
                        faults["duplicate_tasks"] += 1
                with private.client() as client:
                    for roadmap_id, owner in running.items():
                        response = client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")
                        faults["resume_pressed"] += 1
                        faults["resume_409"] += response.status_code == 409
                        if _live_lease(database_url, roadmap_id) == owner:
                            # The same job held the lease before and after: refused, no 2nd job.
                            assert response.status_code == 409, response.text
                            assert "being generated by a running job" in response.text

            def progressed(before: int, kind: str, since: float) -> None:
                """Wait for a new content row (timed as a recovery), or for no roadmap to be
                left generating (the last ones may only have broken concepts to retry)."""
                wait_for(
                    lambda: saved() > before or not unfinished(),
                    timeout=60,
                    what=f"content written again or every roadmap finished ({kind})",
                )
                if saved() > before:
                    recovery.add(kind, since)

            def terminate_backends() -> None:
                in_flight.append(unfinished())
                stormed = time.monotonic()
                for _ in range(3):
                    faults["backends_terminated"] += _count(
                        database_url,
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = %(i)s AND pid <> pg_backend_pid()",
                        database,
                    )
                    time.sleep(0.2)
                progressed(saved(), "pg_terminate_backend storm: content written again", stormed)

            def sigkill_content_worker() -> None:
                in_flight.append(unfinished())
                before, killed = saved(), time.monotonic()
                private.workers["content"].kill()
                faults["sigkills"] += 1
                private.start_worker("content", ["content"], concurrency=3, **slow)
                progressed(before, "sigkill: content written again", killed)

            # Every roadmap is generating content (and holds a lease) before the first fault.
            wait_for(
                lambda: all(len(_content_rows(database_url, r)) >= 2 for r in ids),
                timeout=60,
                what="content being written for every roadmap",
            )

            # An SSE subscriber that stays connected through everything below.
            watched = ids[0]

            def watch() -> None:
                with private.client() as client:
                    events.extend(read_events(client, watched))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()

            duplicate_and_resume()
            terminate_backends()

            def restart_redis(down_s: float) -> float:
                # SIGKILL: what Redis held (queued tasks, subscriptions) is gone with it.
                redis.kill()
                faults["redis_restarts"] += 1
                in_flight.append(unfinished())
                time.sleep(down_s)
                redis.start()
                return time.monotonic()

            # The subscriber's roadmap is still generating: its stream spans the restart.
            assert _status(database_url, watched) == "generating_content"
            restarted = restart_redis(1.0)
            late = _submit(private, late_goal)  # through the API's producer: reconnected
            recovery.add("redis restart: new roadmap accepted", restarted)
            ids.append(late)
            goal_of[late] = late_goal
            wait_for(
                lambda: _status(database_url, late) == "designing",
                timeout=60,
                what="the workflow worker taking a job again",
            )
            recovery.add("redis restart: a new roadmap reached design", restarted)
            # Down again while that job designs: it cannot hand its roadmap to the content queue.
            restarted = restart_redis(2.5)
            wait_for(
                lambda: _content_rows(database_url, late),
                timeout=60,
                what="content for the roadmap designed while Redis was down",
            )
            recovery.add("redis restart during design: content started", restarted)

            sigkill_content_worker()
            duplicate_and_resume()
            terminate_backends()
            sigkill_content_worker()

            last_fault = time.monotonic()

            def settled() -> bool:
                busy = _count(
                    database_url,
                    "SELECT count(*) FROM roadmaps WHERE id = ANY(%(i)s::uuid[])"
                    " AND (lease_owner IS NOT NULL OR status NOT IN ('completed', 'failed'))",
                    ids,
                )
                return busy == 0 and _queued_tasks(redis.url, "faults:") == 0

            def stays_settled() -> bool:
                # A duplicate still queued could take a failed roadmap up again: wait it out.
                if not settled():
                    return False
                time.sleep(2.0)
                return settled()

            wait_for(
                stays_settled, timeout=120, what="every job finished, no lease, no task queued"
            )
            recovery.add("all roadmaps settled after the last fault", last_fault)
            watcher.join(timeout=60)
            assert not watcher.is_alive()

            rows = 0
            for roadmap_id in ids:
                goal = goal_of[roadmap_id]
                concepts = _concepts(database_url, roadmap_id)
                broken = {
                    c for c, title in concepts.items() if title in broken_titles.get(goal, ())
                }
                assert len(broken) == len(broken_titles.get(goal, ()))
                status, error, failed_concepts, version = query(
                    database_url,
                    "SELECT status, error, failed_concepts, curriculum_version FROM roadmaps"
                    " WHERE id = %(r)s",
                    {"r": roadmap_id},
                )[0]
                assert version == 1
                if broken:
                    assert status == "failed", (goal, error)
                    assert sorted(f["concept_id"] for f in failed_concepts) == sorted(broken)
                    assert all("LLM_FAIL_CONCEPTS" in f["reason"] for f in failed_concepts)
                    assert f"{len(broken)} of {len(concepts)} concepts failed" in error
                else:
                    assert status == "completed", (goal, error)
                    assert failed_concepts == []
                # Designed once: the duplicate `generate_roadmap` tasks redesigned nothing.
                assert sorted(concepts.values()) == sorted(_curriculum_titles(goal))
                content = [row[0] for row in _content_rows(database_url, roadmap_id)]
                # One row per concept that is not broken, none twice, nothing foreign.
                assert content == sorted(set(concepts) - broken), goal
                rows += len(content)
            # No concept under another roadmap's module, no content row whose concept is gone
            # or belongs to another roadmap.
            assert (
                _count(
                    database_url,
                    "SELECT count(*) FROM concepts c JOIN modules m ON m.id = c.module_id"
                    " JOIN stages s ON s.id = m.stage_id"
                    " WHERE c.roadmap_id = ANY(%(i)s::uuid[]) AND s.roadmap_id <> c.roadmap_id",
                    ids,
                )
                == 0
            )
            assert (
                _count(
                    database_url,
                    "SELECT count(*) FROM concept_content cc LEFT JOIN concepts c"
                    " ON c.id = cc.concept_id AND c.roadmap_id = cc.roadmap_id"
                    " WHERE cc.roadmap_id = ANY(%(i)s::uuid[]) AND c.id IS NULL",
                    ids,
                )
                == 0
            )
            # Exactly one job finished each roadmap; every duplicate was a logged no-op. (Logs
            # travel through the `logs` queue, so a restart of this disk-less Redis can drop one
            # that was queued: "at most one", and the count found is reported.)
            completions = _count(
                database_url,
                "SELECT count(*) FROM execution_logs WHERE roadmap_id = ANY(%(i)s::uuid[])"
                " AND step IN ('content', 'resume') AND status = 'succeeded'",
                ids,
            )
            assert (
                _count(
                    database_url,
                    "SELECT count(*) FROM (SELECT roadmap_id FROM execution_logs"
                    " WHERE roadmap_id = ANY(%(i)s::uuid[]) AND step IN ('content', 'resume')"
                    " AND status = 'succeeded' GROUP BY roadmap_id HAVING count(*) > 1) twice",
                    ids,
                )
                == 0
            )
            refused = _count(
                database_url,
                "SELECT count(*) FROM execution_logs WHERE roadmap_id = ANY(%(i)s::uuid[])"
                " AND status = 'skipped'",
                ids,
            )
            assert refused > 0
        finally:
            celery.close()
            private.stop()

    # The subscriber saw progress through the Redis restart, in order, up to the final status.
    assert events[0]["type"] == "snapshot"
    assert events[-1].get("status") == "completed", events[-3:]
    done = [e["done"] for e in events if e["type"] in ("snapshot", "concept_saved")]
    assert done == sorted(done)
    announced = [e["concept_id"] for e in events if e["type"] == "concept_saved"]
    assert len(announced) == len(set(announced))  # no concept announced (so saved) twice
    print(
        f"faults injected {faults} (LLM_FAIL_CONCEPTS broke {sum(map(len, broken_titles.values()))}"
        f" concepts); {len(ids)} roadmaps, {rows} content rows checked, {len(events)} SSE events"
        f" through the restart; {completions} completion logs, {refused} duplicate jobs refused"
        f"; roadmaps in flight at each fault {in_flight}; recoveries (s) {recovery.seconds}; test {time.monotonic() - started:.0f} s"
    )
