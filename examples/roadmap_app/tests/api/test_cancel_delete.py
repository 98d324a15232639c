"""Cancel, delete and resume in process: which states allow them, their messages, and what they
change (and leave alone)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from roadmap_testkit import query

import loopsafe.db
from roadmap_app import repositories
from roadmap_app.config import Settings
from roadmap_app.events import EventStream
from roadmap_app.models import RoadmapStatus

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
S = RoadmapStatus
STAGES = [
    {
        "title": "Basics",
        "modules": [{"title": "Syntax", "concepts": [{"title": "Atoms"}, {"title": "Lists"}]}],
    }
]


async def _roadmap(
    status: RoadmapStatus, *, curriculum_ready: bool = False, leased: bool = False
) -> uuid.UUID:
    """A roadmap in `status` with a two-concept curriculum (one with content); `leased`: a job
    holds it."""
    async with loopsafe.db.session() as session:
        roadmap = await repositories.create_roadmap(
            session, goal="Learn Scheme", level="beginner", weekly_hours=3, review=False
        )
        await repositories.replace_curriculum(session, roadmap.id, STAGES)
        (first, *_) = await repositories.concepts_without_content(session, roadmap.id)
        await repositories.save_content(
            session,
            roadmap.id,
            [repositories.NewContent(first.id, "# Atoms\n\nEverything else is a list.", [], [])],
        )
        await repositories.update_roadmap(
            session,
            roadmap.id,
            status=status,
            curriculum_ready=curriculum_ready,
            lease_owner=uuid.uuid4() if leased else None,
            lease_expires_at=repositories.lease_until(60) if leased else None,
        )
        return roadmap.id


def _state(database_url: str, roadmap_id: uuid.UUID) -> list[tuple[object, ...]]:
    return query(
        database_url,
        "SELECT status, lease_owner IS NOT NULL,"
        " (SELECT count(*) FROM concept_content c WHERE c.roadmap_id = r.id)"
        " FROM roadmaps r WHERE id = %(i)s",
        {"i": roadmap_id},
    )


# --- Cancel -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [S.pending, S.analyzing, S.designing, S.human_review_pending, S.review_submitted,
     S.generating_content],
)  # fmt: skip
async def test_cancel_of_an_unfinished_roadmap_marks_it_cancelled_keeps_content_and_tells_listeners(
    client: httpx.AsyncClient, configured: Settings, database_url: str, status: RoadmapStatus
) -> None:
    roadmap_id = await _roadmap(status, leased=status is S.generating_content)
    stream = EventStream(configured, roadmap_id)
    try:
        assert await stream.open()
        response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/cancel")
        assert response.status_code == 202
        assert response.json() == {"task_id": str(roadmap_id), "status": "cancelled"}
        event = await asyncio.wait_for(stream.next(), 5)
    finally:
        await stream.close()
    assert (event["type"], event["status"]) == ("status", "cancelled")
    # The running job (its lease) stops by itself and releases it; saved content stays.
    leased = status is S.generating_content
    assert _state(database_url, roadmap_id) == [("cancelled", leased, 1)]
    body = (await client.get(f"/api/v1/roadmaps/{roadmap_id}")).json()
    assert body["status"] == "cancelled"
    assert body["progress"]["done"] == 1


@pytest.mark.parametrize("status", [S.completed, S.failed, S.cancelled])
async def test_cancel_of_a_finished_roadmap_is_a_409_and_changes_nothing(
    client: httpx.AsyncClient, database_url: str, status: RoadmapStatus
) -> None:
    roadmap_id = await _roadmap(status)
    response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/cancel")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"roadmap {roadmap_id} is already {status.value!r}; only a roadmap still being "
        "generated or waiting for a review can be cancelled"
    )
    assert _state(database_url, roadmap_id) == [(status.value, False, 1)]


# --- Delete -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.completed, S.failed, S.cancelled, S.human_review_pending])
async def test_delete_removes_a_roadmap_no_job_works_on_with_everything_it_owns(
    client: httpx.AsyncClient, configured: Settings, database_url: str, status: RoadmapStatus
) -> None:
    roadmap_id = await _roadmap(status)
    async with loopsafe.db.session() as session:
        await repositories.add_execution_log(
            session, roadmap_id=roadmap_id, step="content", status="succeeded"
        )
    stream = EventStream(configured, roadmap_id)
    try:
        assert await stream.open()
        response = await client.delete(f"/api/v1/roadmaps/{roadmap_id}")
        assert response.status_code == 204
        assert response.content == b""
        event = await asyncio.wait_for(stream.next(), 5)
    finally:
        await stream.close()
    assert event["type"] == "deleted"  # open pages learn that it is gone
    assert (await client.get(f"/api/v1/roadmaps/{roadmap_id}")).status_code == 404
    for table in ("roadmaps", "stages", "concepts", "concept_content", "execution_logs"):
        column = "id" if table == "roadmaps" else "roadmap_id"
        assert query(
            database_url, f"SELECT count(*) FROM {table} WHERE {column} = %(i)s", {"i": roadmap_id}
        ) == [(0,)], table
    again = await client.delete(f"/api/v1/roadmaps/{roadmap_id}")
    assert again.status_code == 404
    assert again.json() == {"detail": f"roadmap {roadmap_id} not found"}


@pytest.mark.parametrize(
    ("status", "leased"),
    [
        (S.generating_content, True),
        (S.analyzing, True),
        # Queued: no lease yet, but a job is on its way.
        (S.pending, False),
        (S.review_submitted, False),
    ],
)
async def test_delete_while_a_job_runs_or_is_queued_is_a_409_and_deletes_nothing(
    client: httpx.AsyncClient, database_url: str, status: RoadmapStatus, leased: bool
) -> None:
    roadmap_id = await _roadmap(status, leased=leased)
    response = await client.delete(f"/api/v1/roadmaps/{roadmap_id}")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"roadmap {roadmap_id} is {status.value!r}: a job is running or queued on it; cancel it "
        f"first (POST /api/v1/roadmaps/{roadmap_id}/cancel), then delete it once it has stopped"
    )
    assert _state(database_url, roadmap_id) == [(status.value, leased, 1)]


async def test_delete_of_a_cancelled_roadmap_whose_job_is_still_stopping_is_a_409(
    client: httpx.AsyncClient, database_url: str
) -> None:
    roadmap_id = await _roadmap(S.cancelled, leased=True)
    response = await client.delete(f"/api/v1/roadmaps/{roadmap_id}")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"roadmap {roadmap_id} is cancelled and its job is still stopping (saving what it had "
        "finished); try again in a few seconds"
    )
    assert _state(database_url, roadmap_id) == [("cancelled", True, 1)]
    # Once the job has released its lease (or it lapsed), the delete goes through.
    query(
        database_url,
        "UPDATE roadmaps SET lease_expires_at = now() - interval '1 s' WHERE id = %(i)s"
        " RETURNING id",
        {"i": roadmap_id},
    )
    assert (await client.delete(f"/api/v1/roadmaps/{roadmap_id}")).status_code == 204


# --- Resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ready", "resumed"),
    [
        (S.failed, True, "generating_content"),
        (S.cancelled, True, "generating_content"),
        (S.cancelled, False, "pending"),
    ],
)
async def test_a_second_resume_while_the_first_job_is_queued_is_a_409(
    client: httpx.AsyncClient,
    database_url: str,
    status: RoadmapStatus,
    ready: bool,
    resumed: str,
) -> None:
    roadmap_id = await _roadmap(status, curriculum_ready=ready)
    first = await client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")
    assert first.status_code == 202
    assert first.json()["status"] == resumed
    second = await client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")
    assert second.status_code == 409
    assert second.json()["detail"] == (
        f"roadmap {roadmap_id} already has a job queued or running (status {resumed!r}); "
        "watch its events instead — if no worker takes it, it is re-queued automatically"
    )
    assert _state(database_url, roadmap_id) == [(resumed, False, 1)]


async def test_resume_of_a_job_no_worker_took_for_a_lease_period_queues_it_again(
    client: httpx.AsyncClient, configured: Settings, database_url: str
) -> None:
    roadmap_id = await _roadmap(S.generating_content, curriculum_ready=True)
    assert (await client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")).status_code == 409
    # Untouched for longer than a lease: the queued job was lost (the sweeper's rule too).
    query(
        database_url,
        "UPDATE roadmaps SET updated_at = now() - make_interval(secs => %(s)s) WHERE id = %(i)s"
        " RETURNING id",
        {"s": configured.job_lease_s + 1, "i": roadmap_id},
    )
    response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")
    assert response.status_code == 202
    assert response.json()["status"] == "generating_content"


@pytest.mark.parametrize(
    ("method", "suffix"), [("POST", "/cancel"), ("DELETE", "")], ids=["cancel", "delete"]
)
async def test_cancel_and_delete_of_unknown_or_malformed_ids_get_404_and_422(
    client: httpx.AsyncClient, method: str, suffix: str
) -> None:
    missing = uuid.uuid4()
    response = await client.request(method, f"/api/v1/roadmaps/{missing}{suffix}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"roadmap {missing} not found"}
    malformed = await client.request(method, f"/api/v1/roadmaps/not-a-uuid{suffix}")
    assert malformed.status_code == 422
    assert "Input should be a valid UUID" in malformed.text


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "", {"offset": "20"}),
        ("GET", "", {"limit": "5", "sort": "oldest"}),
        ("GET", "/{id}", {"contents": "false"}),
        ("POST", "/{id}/resume", {"force": "1"}),
        ("POST", "/{id}/cancel", {"now": "yes"}),
        ("DELETE", "/{id}", {"cascade": "1"}),
    ],
)
async def test_unknown_query_parameters_get_422_naming_them_and_change_nothing(
    client: httpx.AsyncClient,
    database_url: str,
    method: str,
    path: str,
    params: dict[str, str],
) -> None:
    """As unknown body fields do: `?offset` must not be silently ignored (issue 22)."""
    roadmap_id = await _roadmap(S.failed, curriculum_ready=True)
    url = "/api/v1/roadmaps" + path.format(id=roadmap_id)
    response = await client.request(method, url, params=params)
    assert response.status_code == 422
    unknown = [(k, v) for k, v in params.items() if k not in ("limit",)]
    assert response.json()["detail"] == [
        {"type": "extra_forbidden", "loc": ["query", k], "msg": "Extra inputs are not permitted",
         "input": v}
        for k, v in unknown
    ]  # fmt: skip
    assert _state(database_url, roadmap_id) == [("failed", False, 1)]
    # The declared ones still work.
    assert (await client.get("/api/v1/roadmaps", params={"limit": 2})).status_code == 200
    detail = await client.get(f"/api/v1/roadmaps/{roadmap_id}", params={"content": "false"})
    assert detail.status_code == 200


# --- Export -------------------------------------------------------------------------------------


async def test_export_as_markdown_has_the_curriculum_and_the_written_content(
    client: httpx.AsyncClient,
) -> None:
    roadmap_id = await _roadmap(S.generating_content)
    response = await client.get(f"/api/v1/roadmaps/{roadmap_id}/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    assert response.headers["content-disposition"] == 'attachment; filename="learn-scheme.md"'
    text = response.text
    assert text.startswith("# Learn Scheme\n\nGoal: Learn Scheme · beginner · 3 h/week")
    assert "(1/2 concepts written)" in text
    assert "## Stage 1: Basics\n\n### Syntax\n\n#### Atoms (1 h)\n\n##### Atoms\n" in text
    assert "Everything else is a list." in text
    assert "#### Lists (1 h)\n\n_Not written yet._" in text


async def test_export_as_json_is_the_roadmap_without_its_logs(client: httpx.AsyncClient) -> None:
    roadmap_id = await _roadmap(S.completed)
    response = await client.get(f"/api/v1/roadmaps/{roadmap_id}/export", params={"format": "json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == 'attachment; filename="learn-scheme.json"'
    exported = response.json()
    shown = (await client.get(f"/api/v1/roadmaps/{roadmap_id}")).json()
    assert exported == {**shown, "logs": []}


@pytest.mark.parametrize(
    ("params", "status_code", "message"),
    [
        ({"format": "pdf"}, 422, "Input should be 'markdown' or 'json'"),
        ({"format": "json", "pages": "2"}, 422, "Extra inputs are not permitted"),
    ],
)
async def test_export_refuses_what_it_cannot_do(
    client: httpx.AsyncClient, params: dict[str, str], status_code: int, message: str
) -> None:
    roadmap_id = await _roadmap(S.completed)
    response = await client.get(f"/api/v1/roadmaps/{roadmap_id}/export", params=params)
    assert response.status_code == status_code
    assert message in response.text
    missing = uuid.uuid4()
    gone = await client.get(f"/api/v1/roadmaps/{missing}/export")
    assert gone.status_code == 404
    assert gone.json() == {"detail": f"roadmap {missing} not found"}


# --- Regenerate one concept ---------------------------------------------------------------------


def _concepts(database_url: str, roadmap_id: uuid.UUID) -> list[tuple[int, bool]]:
    """(concept id, has content) of the roadmap, in curriculum order."""
    return [
        (int(concept_id), bool(saved))
        for concept_id, saved in query(
            database_url,
            "SELECT c.id, cc.concept_id IS NOT NULL FROM concepts c LEFT JOIN concept_content cc"
            " ON cc.concept_id = c.id WHERE c.roadmap_id = %(i)s ORDER BY c.id",
            {"i": roadmap_id},
        )
    ]


@pytest.mark.parametrize("status", [S.completed, S.failed, S.cancelled])
async def test_regenerate_forgets_one_concepts_content_and_queues_the_checkpoint_job(
    client: httpx.AsyncClient, database_url: str, status: RoadmapStatus
) -> None:
    roadmap_id = await _roadmap(status, curriculum_ready=True)
    (written, _), (unwritten, _) = _concepts(database_url, roadmap_id)
    url = f"/api/v1/roadmaps/{roadmap_id}/concepts/{written}/regenerate"
    response = await client.post(url)
    assert response.status_code == 202, response.text
    assert response.json() == {"task_id": str(roadmap_id), "status": "generating_content"}
    assert _concepts(database_url, roadmap_id) == [(written, False), (unwritten, False)]
    assert _state(database_url, roadmap_id) == [("generating_content", False, 0)]
    # Pressed again while its job is queued: refused, as resume is.
    again = await client.post(url)
    assert again.status_code == 409
    assert "a concept can be written again once the roadmap is completed" in again.text


async def test_regenerate_refuses_unknown_concepts_running_roadmaps_and_unfinal_curricula(
    client: httpx.AsyncClient, database_url: str
) -> None:
    roadmap_id = await _roadmap(S.completed, curriculum_ready=True)
    other = await _roadmap(S.completed, curriculum_ready=True)
    (foreign, _), _ = _concepts(database_url, other)
    response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/concepts/{foreign}/regenerate")
    assert response.status_code == 404
    assert response.json() == {"detail": f"roadmap {roadmap_id} has no concept {foreign}"}
    assert _state(database_url, roadmap_id) == [("completed", False, 1)]  # rolled back
    assert _state(database_url, other)[0][2] == 1

    running = await _roadmap(S.generating_content, curriculum_ready=True, leased=True)
    (concept, _), _ = _concepts(database_url, running)
    refused = await client.post(f"/api/v1/roadmaps/{running}/concepts/{concept}/regenerate")
    assert refused.status_code == 409
    assert _state(database_url, running) == [("generating_content", True, 1)]

    unreviewed = await _roadmap(S.cancelled, curriculum_ready=False)
    (concept, _), _ = _concepts(database_url, unreviewed)
    refused = await client.post(f"/api/v1/roadmaps/{unreviewed}/concepts/{concept}/regenerate")
    assert refused.status_code == 409
    assert refused.json()["detail"].endswith("(and its curriculum is final)")

    missing = uuid.uuid4()
    gone = await client.post(f"/api/v1/roadmaps/{missing}/concepts/1/regenerate")
    assert gone.status_code == 404
    bad = await client.post(f"/api/v1/roadmaps/{roadmap_id}/concepts/0/regenerate")
    assert bad.status_code == 422
    assert "Input should be greater than or equal to 1" in bad.text
