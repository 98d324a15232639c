"""Cancel and delete against real worker processes (the fault suite's user-made faults): a
cancel during content generation stops the job, loses nothing and leaves no job running; a
delete while a job runs is refused."""

from __future__ import annotations

import time

import httpx
import pytest
from roadmap_testkit import FULL_TIER, SLOW_TIER_REASON, Stack, query, wait_for, wait_for_status

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]


def _saved(database_url: str, roadmap_id: str) -> tuple[int, int, int]:
    """(content rows, concepts with content, concepts) of the roadmap."""
    (row,) = query(
        database_url,
        "SELECT (SELECT count(*) FROM concept_content WHERE roadmap_id = %(i)s),"
        " (SELECT count(DISTINCT concept_id) FROM concept_content WHERE roadmap_id = %(i)s),"
        " (SELECT count(*) FROM concepts WHERE roadmap_id = %(i)s)",
        {"i": roadmap_id},
    )
    return int(row[0]), int(row[1]), int(row[2])


def _lease(database_url: str, roadmap_id: str) -> object:
    return query(database_url, "SELECT lease_owner FROM roadmaps WHERE id = %(i)s",
                 {"i": roadmap_id})[0][0]  # fmt: skip


def _generating(client: httpx.Client, database_url: str) -> str:
    """A new roadmap, once its content job runs and has saved a few concepts."""
    response = client.post("/api/v1/roadmaps", json={"goal": "Learn Rust for embedded systems"})
    assert response.status_code == 202
    roadmap_id: str = response.json()["task_id"]
    wait_for_status(client, roadmap_id, "generating_content", timeout=60)
    wait_for(lambda: _saved(database_url, roadmap_id)[1] >= 2, timeout=60, what="2 concepts saved")
    return roadmap_id


@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_cancel_during_generation_stops_the_job_loses_nothing_and_resume_completes_it(
    slow_stack: Stack, database_url: str
) -> None:
    with slow_stack.client() as client:
        roadmap_id = _generating(client, database_url)
        assert _lease(database_url, roadmap_id) is not None  # a job runs on it

        # Delete while running: refused, nothing deleted.
        refused = client.delete(f"/api/v1/roadmaps/{roadmap_id}")
        assert refused.status_code == 409, refused.text
        assert "a job is running or queued on it; cancel it first" in refused.json()["detail"]

        cancelled_at = time.monotonic()
        response = client.post(f"/api/v1/roadmaps/{roadmap_id}/cancel")
        assert response.status_code == 202, response.text
        assert client.get(f"/api/v1/roadmaps/{roadmap_id}").json()["status"] == "cancelled"
        # The job notices within its cancel check (1 s), saves what it had and lets go.
        wait_for(lambda: _lease(database_url, roadmap_id) is None, timeout=20,
                 what="the cancelled job to release its lease")  # fmt: skip
        stopped_after = time.monotonic() - cancelled_at
        rows, distinct, total = _saved(database_url, roadmap_id)
        assert rows == distinct  # no duplicate
        assert 2 <= distinct < total, (distinct, total)  # stopped midway, kept what it saved
        # No job left running: nothing is written any more.
        time.sleep(1.5)
        assert _saved(database_url, roadmap_id) == (rows, distinct, total)
        body = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()
        assert body["status"] == "cancelled"
        assert body["progress"]["done"] == distinct
        cancelled_logs = wait_for(
            lambda: [
                log
                for log in client.get(f"/api/v1/roadmaps/{roadmap_id}").json()["logs"]
                if log["status"] == "cancelled"
            ],
            timeout=10,
            what="the cancelled job's log",
        )
        assert [log["step"] for log in cancelled_logs] == ["content"]
        assert cancelled_logs[0]["detail"] == {"saved": distinct, "concepts": total}

        # Resume continues from the checkpoint; pressing it twice queues one job.
        assert client.post(f"/api/v1/roadmaps/{roadmap_id}/resume").status_code == 202
        assert client.post(f"/api/v1/roadmaps/{roadmap_id}/resume").status_code == 409
        done = wait_for_status(client, roadmap_id, "completed", "failed", timeout=90)
        assert done["status"] == "completed", done["error"]
        assert _saved(database_url, roadmap_id) == (total, total, total)  # nothing lost

        def resume_logs() -> list[dict[str, object]]:
            # Execution logs arrive through the `logs` queue, a moment after the status.
            logs = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()["logs"]
            return [log for log in logs if log["step"] == "resume"]

        resumed = wait_for(resume_logs, timeout=10, what="the resume job's log")
        assert [log["status"] for log in resumed] == ["succeeded"]
        assert resumed[0]["detail"]["generated"] == total - distinct  # only the missing ones

        # One concept written again: only it, by the checkpoint job.
        (concept_id,) = query(database_url, "SELECT min(id) FROM concepts WHERE roadmap_id = %(i)s",
                              {"i": roadmap_id})[0]  # fmt: skip
        again = client.post(f"/api/v1/roadmaps/{roadmap_id}/concepts/{concept_id}/regenerate")
        assert again.status_code == 202, again.text
        done = wait_for_status(client, roadmap_id, "completed", "failed", timeout=60)
        assert done["status"] == "completed", done["error"]
        assert _saved(database_url, roadmap_id) == (total, total, total)
        regenerated = wait_for(
            lambda: [log for log in resume_logs() if log["status"] == "succeeded"][1:],
            timeout=10,
            what="the regeneration's log",
        )
        assert regenerated[0]["detail"]["generated"] == 1

        # Finished: now it can be deleted, with everything it owns.
        assert client.delete(f"/api/v1/roadmaps/{roadmap_id}").status_code == 204
        assert client.get(f"/api/v1/roadmaps/{roadmap_id}").status_code == 404
        assert _saved(database_url, roadmap_id) == (0, 0, 0)
    print(f"\ncancel: job stopped {stopped_after:.1f} s after the request, {distinct}/{total} kept")


def test_cancel_while_the_curriculum_is_designed_leaves_no_job_and_no_content_job(
    slow_stack: Stack, database_url: str
) -> None:
    with slow_stack.client() as client:
        response = client.post("/api/v1/roadmaps", json={"goal": "Learn Elixir and OTP"})
        roadmap_id = response.json()["task_id"]
        wait_for_status(client, roadmap_id, "analyzing", "designing", timeout=60)
        assert client.post(f"/api/v1/roadmaps/{roadmap_id}/cancel").status_code == 202
        wait_for(lambda: _lease(database_url, roadmap_id) is None, timeout=20,
                 what="the cancelled job to release its lease")  # fmt: skip
        time.sleep(1.5)  # a content job, had one been queued, would have started by now
        body = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()
        assert body["status"] == "cancelled"
        assert _saved(database_url, roadmap_id)[:2] == (0, 0)
        assert not [log for log in body["logs"] if log["step"] in ("content", "resume")]
        assert client.delete(f"/api/v1/roadmaps/{roadmap_id}").status_code == 204
