"""Hostile request bodies get a 4xx naming what is wrong, never a 5xx, and write nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from roadmap_testkit import query

from roadmap_app.api.request_guard import MAX_BODY_BYTES, MAX_DEPTH, MAX_NUMBER_DIGITS
from roadmap_app.config import Settings
from roadmap_app.main import create_app

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROADMAPS = "/api/v1/roadmaps"


def _count(database_url: str) -> int:
    return int(query(database_url, "SELECT count(*) FROM roadmaps")[0][0])


def _nested(depth: int) -> bytes:
    return b'{"goal": "Learn Go", "extra": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


HOSTILE_JSON: list[tuple[bytes, str, str]] = [
    (b'{"goal": "Learn Go", "weekly_hours": NaN}', "body.weekly_hours", "NaN is not a JSON number"),
    (
        b'{"goal": "Learn Go", "weekly_hours": Infinity}',
        "body.weekly_hours",
        "Infinity is not a JSON number",
    ),
    (
        b'{"goal": "Learn Go", "weekly_hours": -Infinity}',
        "body.weekly_hours",
        "-Infinity is not a JSON number",
    ),
    (
        b'{"goal": "Learn Go", "weekly_hours": 1e309}',
        "body.weekly_hours",
        "1e309 is beyond the range of a 64-bit floating-point number",
    ),
    (
        b'{"goal": "Learn Go", "weekly_hours": 1' + b"0" * 5000 + b"}",
        "body.weekly_hours",
        f"a number of 5001 digits is too long (at most {MAX_NUMBER_DIGITS})",
    ),
    (b'{"goal": "Learn Go", "extra": [1, {"x": NaN}]}', "body.extra.1.x", "NaN is not a JSON"),
    (b'{"goal": "Learn \\ud800 Go"}', "body.goal", "unpaired surrogate"),
    (b'{"\\udfff": 1}', "body", "unpaired surrogate"),
    (_nested(MAX_DEPTH + 5), "body.extra" + ".a" * (MAX_DEPTH - 1), "nests deeper than"),
    (b"[" * 60_000, "body", "nests deeper than"),
    (b'{"goal": "Learn \xff Go"}', "body", "not valid UTF-8"),
    (b"{goal: 1", "body", "JSON decode error: Expecting property name enclosed in double quotes"),
]


@pytest.mark.parametrize(("body", "where", "message"), HOSTILE_JSON)
async def test_hostile_json_gets_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, database_url: str, body: bytes, where: str, message: str
) -> None:
    before = _count(database_url)
    response = await client.post(
        ROADMAPS, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert ".".join(map(str, error["loc"])) == where
    assert message in error["msg"]
    assert _count(database_url) == before


async def test_hostile_json_in_a_review_gets_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{ROADMAPS}/00000000-0000-0000-0000-000000000000/review",
        content=b'{"approve": NaN}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "approve"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/xml", "application/x-www-form-urlencoded"]
)
async def test_a_body_that_is_not_json_gets_415_and_writes_nothing(
    client: httpx.AsyncClient, database_url: str, content_type: str | None
) -> None:
    before = _count(database_url)
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post(ROADMAPS, content=b'{"goal": "Learn Go"}', headers=headers)
    assert response.status_code == 415
    assert response.json()["detail"] == (
        f"send the body as JSON with Content-Type: application/json (got {content_type!r})"
    )
    assert _count(database_url) == before


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/merge-patch+json"]
)
async def test_json_media_types_with_parameters_or_suffix_are_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        ROADMAPS, content=b'{"goal": "Learn Go"}', headers={"content-type": content_type}
    )
    assert response.status_code == 202, response.text


def _chunks(total: int) -> Iterator[bytes]:
    yield b'{"goal": "'
    for _ in range(total // 1024):
        yield b"x" * 1024
    yield b'"}'


async def _chunks_async(total: int) -> AsyncIterator[bytes]:
    for chunk in _chunks(total):
        yield chunk


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_gets_413_and_writes_nothing(
    client: httpx.AsyncClient, database_url: str, declared: bool
) -> None:
    before = _count(database_url)
    headers = {"content-type": "application/json"}
    if declared:
        body = b"".join(_chunks(MAX_BODY_BYTES))
        response = await client.post(ROADMAPS, content=body, headers=headers)
    else:
        response = await client.post(
            ROADMAPS, content=_chunks_async(MAX_BODY_BYTES), headers=headers
        )
    assert response.status_code == 413
    assert response.json()["detail"] == (
        f"the request body is larger than {MAX_BODY_BYTES} bytes; send less"
    )
    assert _count(database_url) == before


async def test_the_app_lifespan_runs_through_the_middleware(configured: Settings) -> None:
    # uvicorn sends the lifespan through every middleware; one that chokes on it makes uvicorn
    # carry on without the lifespan, and nothing closes loopsafe's resources at shutdown.
    app = create_app(configured)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    answers: list[str] = []

    async def receive() -> dict[str, str]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        answers.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
