"""The roadmap routes in process: validation, status codes, messages, and nothing written on errors."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import httpx
import pytest
from roadmap_testkit import query

import loopsafe.db
from roadmap_app import repositories
from roadmap_app.api.security_headers import CONTENT_SECURITY_POLICY
from roadmap_app.config import Settings
from roadmap_app.main import create_app
from roadmap_app.models import RoadmapStatus
from roadmap_app.processes import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _count(database_url: str) -> int:
    return int(query(database_url, "SELECT count(*) FROM roadmaps")[0][0])


def _messages(response: httpx.Response) -> list[tuple[str, str]]:
    return [(".".join(map(str, d["loc"])), d["msg"]) for d in response.json()["detail"]]


BAD_BODIES: list[tuple[Any, str, str]] = [
    ({}, "body.goal", "Field required"),
    ({"goal": "   "}, "body.goal", "goal should have at least 3 characters besides spaces"),
    (
        {"goal": " a b "},
        "body.goal",
        "goal should have at least 3 characters besides spaces",
    ),
    # Invisible characters are not characters a reader sees (issue 22).
    (
        {"goal": "\u200b\u200b\u200bx"},
        "body.goal",
        "goal should have at least 3 characters besides spaces",
    ),
    (
        {"goal": "a\ufeff\u2060b\u200d"},
        "body.goal",
        "goal should have at least 3 characters besides spaces",
    ),
    # Symbols, arrows, dingbats and punctuation beyond ASCII are not words either.
    ({"goal": "→→→ ✓✓✓"}, "body.goal", "goal must describe what you want to learn in words"),
    ({"goal": "…—– «» ¿¡"}, "body.goal", "goal must describe what you want to learn in words"),
    ({"goal": "★☆★ 〜〜"}, "body.goal", "goal must describe what you want to learn in words"),
    ({"goal": "x" * 201}, "body.goal", "String should have at most 200 characters"),
    # The limit counts what was sent, as the schema's maxLength does, not what is kept.
    ({"goal": " " + "x" * 200}, "body.goal", "String should have at most 200 characters"),
    ({"goal": "1234 5678"}, "body.goal", "goal must describe what you want to learn in words"),
    # Emoji are not letters, nor are digits of other scripts or a Hangul filler, which shows
    # nothing (issue 22: "🐍🐍🐍" was accepted).
    ({"goal": "🐍🐍🐍"}, "body.goal", "it needs a letter (of any script)"),
    ({"goal": "🐍 3.12 🚀"}, "body.goal", "goal must describe what you want to learn in words"),
    ({"goal": "٣٤٥ ١٢"}, "body.goal", "goal must describe what you want to learn in words"),
    ({"goal": "\u3164 1 2 3"}, "body.goal", "goal must describe what you want to learn in words"),
    ({"goal": "Learn\x00 C"}, "body.goal", "goal must not contain control characters"),
    (
        {"goal": "Learn Go", "level": "expert"},
        "body.level",
        "Input should be 'beginner', 'intermediate' or 'advanced'",
    ),
    (
        {"goal": "Learn Go", "weekly_hours": 0},
        "body.weekly_hours",
        "Input should be greater than or equal to 1",
    ),
    (
        {"goal": "Learn Go", "weekly_hours": 81},
        "body.weekly_hours",
        "Input should be less than or equal to 80",
    ),
    (
        {"goal": "Learn Go", "weekly_hours": "5"},
        "body.weekly_hours",
        "Input should be a valid integer",
    ),
    (
        {"goal": "Learn Go", "weekly_hours": 7.5},
        "body.weekly_hours",
        "Input should be a valid integer",
    ),
    (
        {"goal": "Learn Go", "weekly_hours": True},
        "body.weekly_hours",
        "Input should be a valid integer",
    ),
    ({"goal": "Learn Go", "review": "maybe"}, "body.review", "Input should be a valid boolean"),
    ({"goal": "Learn Go", "review": "true"}, "body.review", "Input should be a valid boolean"),
    ({"goal": "Learn Go", "weeklyHours": 3}, "body.weeklyHours", "Extra inputs are not permitted"),
    (["Learn Go"], "body", "Input should be a valid dictionary or object"),
]


@pytest.mark.parametrize(("body", "where", "message"), BAD_BODIES)
async def test_invalid_roadmap_requests_get_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient, database_url: str, body: Any, where: str, message: str
) -> None:
    before = _count(database_url)
    response = await client.post("/api/v1/roadmaps", json=body)
    assert response.status_code == 422
    assert any(loc == where and message in msg for loc, msg in _messages(response)), response.json()
    assert _count(database_url) == before


@pytest.mark.parametrize("hours", [2, 2.0], ids=["int", "whole-float"])
async def test_valid_request_creates_a_pending_roadmap_and_answers_202(
    client: httpx.AsyncClient, database_url: str, hours: float
) -> None:
    # 2.0 is an integer for JSON Schema, so a client generated from the schema may send it.
    response = await client.post(
        "/api/v1/roadmaps",
        json={"goal": "  Learn \r\n  Elixir ", "level": "advanced", "weekly_hours": hours},
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert response.json()["status"] == "pending"
    (row,) = query(
        database_url,
        "SELECT goal, level, weekly_hours FROM roadmaps WHERE id = %(i)s",
        {"i": task_id},
    )
    assert row == ("Learn Elixir", "advanced", 2)  # whitespace normalised


@pytest.mark.parametrize(
    "goal",
    [
        "学习 Python 数据分析",
        "Изучить Go",
        "تعلم البرمجة",
        "Learn C++ → Rust",
        "日本語を学ぶ",
        "Ñandú 101",
        "Μάθε ελληνικά",
        "🐍 Python 🐍",
        "한국어 배우기",
    ],
)
async def test_goals_in_any_script_with_a_letter_are_accepted(
    client: httpx.AsyncClient, goal: str
) -> None:
    response = await client.post("/api/v1/roadmaps", json={"goal": goal})
    assert response.status_code == 202, response.text


async def test_broker_down_records_failed_state_and_answers_503(
    settings: Settings, database_url: str
) -> None:
    unreachable = replace(settings, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(unreachable)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/api/v1/roadmaps", json={"goal": "Learn Erlang"})
    app.state.celery.close()
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("could not queue generate_roadmap")
    assert "check that the broker (REDIS_URL) is reachable" in detail
    (row,) = query(
        database_url,
        "SELECT status, error FROM roadmaps WHERE goal = 'Learn Erlang' ORDER BY created_at DESC LIMIT 1",
    )
    assert row == ("failed", detail)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/roadmaps/not-a-uuid"),
        ("GET", "/api/v1/roadmaps/12345/events"),
        ("POST", "/api/v1/roadmaps/xyz/resume"),
    ],
)
async def test_malformed_ids_get_422(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 422
    assert "Input should be a valid UUID" in response.text


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("GET", "/events", None),
        ("POST", "/resume", None),
        ("POST", "/review", {"approve": True}),
    ],
)
async def test_unknown_roadmaps_get_404(
    client: httpx.AsyncClient, method: str, suffix: str, body: Any
) -> None:
    missing = uuid.uuid4()
    response = await client.request(method, f"/api/v1/roadmaps/{missing}{suffix}", json=body)
    assert response.status_code == 404
    assert response.json() == {"detail": f"roadmap {missing} not found"}


async def _roadmap_in(status: RoadmapStatus) -> uuid.UUID:
    async with loopsafe.db.session() as session:
        roadmap = await repositories.create_roadmap(
            session, goal="Learn Lisp", level="beginner", weekly_hours=3, review=True
        )
        roadmap.status = status
        return roadmap.id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"approve": False}, "feedback is required when rejecting"),
        ({"approve": False, "feedback": "   "}, "feedback is required when rejecting"),
        ({"approve": False, "feedback": "more\x00"}, "feedback must not contain control chara"),
        ({"approve": True, "feedback": "x" * 2001}, "String should have at most 2000 characters"),
        ({"approve": "yes"}, "Input should be a valid boolean"),
        ({}, "Field required"),
        ({"approve": True, "comment": "ok"}, "Extra inputs are not permitted"),
    ],
)
async def test_invalid_reviews_get_422_and_change_nothing(
    client: httpx.AsyncClient, database_url: str, body: Any, message: str
) -> None:
    roadmap_id = await _roadmap_in(RoadmapStatus.human_review_pending)
    response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/review", json=body)
    assert response.status_code == 422
    assert message in response.text
    (row,) = query(
        database_url, "SELECT status, feedback FROM roadmaps WHERE id = %(i)s", {"i": roadmap_id}
    )
    assert row == ("human_review_pending", None)


async def test_review_of_a_roadmap_not_awaiting_review_is_a_409(client: httpx.AsyncClient) -> None:
    roadmap_id = await _roadmap_in(RoadmapStatus.completed)
    response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/review", json={"approve": True})
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"roadmap {roadmap_id} is 'completed'; only a roadmap in 'human_review_pending' can be reviewed"
    )


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (RoadmapStatus.completed, "is already completed; nothing to resume"),
        (RoadmapStatus.human_review_pending, "is waiting for a review: POST /api/v1/roadmaps/"),
    ],
)
async def test_resume_is_refused_with_409_where_it_makes_no_sense(
    client: httpx.AsyncClient, status: RoadmapStatus, message: str
) -> None:
    roadmap_id = await _roadmap_in(status)
    response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")
    assert response.status_code == 409
    assert message in response.json()["detail"]


async def test_resume_while_a_job_holds_the_roadmap_is_a_409_and_changes_nothing(
    client: httpx.AsyncClient, database_url: str
) -> None:
    roadmap_id = await _roadmap_in(RoadmapStatus.generating_content)
    owner = uuid.uuid4()
    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(
            session,
            roadmap_id,
            curriculum_ready=True,
            lease_owner=owner,
            lease_expires_at=repositories.lease_until(60),
        )
    response = await client.post(f"/api/v1/roadmaps/{roadmap_id}/resume")
    assert response.status_code == 409
    assert "is being generated by a running job" in response.json()["detail"]
    assert query(
        database_url,
        "SELECT status, lease_owner FROM roadmaps WHERE id = %(i)s",
        {"i": roadmap_id},
    ) == [("generating_content", owner)]


async def test_list_limit_is_validated(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/roadmaps", params={"limit": 0})
    assert response.status_code == 422
    assert "Input should be greater than or equal to 1" in response.text
    assert (await client.get("/api/v1/roadmaps", params={"limit": 2})).status_code == 200


async def test_web_page_and_static_files_are_served_under_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert "<title>Roadmap generator" in page.text
    # Nothing inline: the script and styles come from files the policy allows.
    assert "<script>" not in page.text
    assert "style=" not in page.text
    for response in [page] + [await client.get(f"/static/app.{ext}") for ext in ("js", "css")]:
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


async def test_a_roadmap_lists_the_concepts_that_failed_with_their_reason(
    client: httpx.AsyncClient,
) -> None:
    stages = [
        {
            "title": "Basics",
            "modules": [
                {"title": "Syntax", "concepts": [{"title": "Words"}, {"title": "Stack effects"}]}
            ],
        }
    ]
    async with loopsafe.db.session() as session:
        roadmap = await repositories.create_roadmap(
            session, goal="Learn Forth", level="beginner", weekly_hours=3, review=False
        )
        await repositories.replace_curriculum(session, roadmap.id, stages)
        roadmap_id = roadmap.id
    body = (await client.get(f"/api/v1/roadmaps/{roadmap_id}", params={"content": False})).json()
    assert body["failed_concepts"] == []
    words, effects = (c for s in body["stages"] for m in s["modules"] for c in m["concepts"])
    assert words["failure_reason"] is None
    assert effects["failure_reason"] is None

    reason = "tutorial for 'Stack effects' failed after 3 attempts: the model is down"
    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(
            session,
            roadmap_id,
            status=RoadmapStatus.failed,
            failed_concepts=[
                {"concept_id": effects["id"], "slug": effects["slug"], "reason": reason}
            ],
        )
    body = (await client.get(f"/api/v1/roadmaps/{roadmap_id}")).json()
    assert body["status"] == "failed"
    assert body["failed_concepts"] == [
        {"id": effects["id"], "title": "Stack effects", "reason": reason}
    ]
    words, effects = (c for s in body["stages"] for m in s["modules"] for c in m["concepts"])
    assert not effects["has_content"]
    assert words["title"] == "Words"
    # The concept's own reason, in the learner's words; a concept that did not fail has none.
    assert effects["failure_reason"] == (
        "Not written: the AI service kept failing while writing its tutorial. "
        "“Retry failed concepts” tries it again."
    )
    assert words["failure_reason"] is None
