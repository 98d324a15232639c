"""`GET /api/v1/roadmaps`: pages by keyset (`Link: rel="next"`), the status filter and goal
search."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

import loopsafe.db
from roadmap_app import repositories
from roadmap_app.models import RoadmapStatus

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _create(goals: list[str]) -> list[uuid.UUID]:
    ids = []
    for goal in goals:
        # One transaction each: `created_at` is the transaction's time, so they differ.
        async with loopsafe.db.session() as session:
            roadmap = await repositories.create_roadmap(
                session, goal=goal, level="beginner", weekly_hours=3, review=False
            )
            ids.append(roadmap.id)
    return ids


def _next(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1)


async def test_pages_follow_the_next_link_newest_first_without_repeats(
    client: httpx.AsyncClient,
) -> None:
    token = uuid.uuid4().hex[:10]
    ids = await _create([f"Learn paging {i} {token}" for i in range(5)])
    url: str | None = f"/api/v1/roadmaps?limit=2&q={token}"
    pages: list[list[str]] = []
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200, response.text
        pages.append([item["id"] for item in response.json()])
        url = _next(response)
        # A roadmap created meanwhile is newer: it never shifts the pages still to come.
        if len(pages) == 1:
            await _create([f"Learn paging late {token}"])
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [i for page in pages for i in page] == [str(i) for i in reversed(ids)]


async def test_the_status_filter_and_the_search_combine_and_search_is_literal(
    client: httpx.AsyncClient,
) -> None:
    token = uuid.uuid4().hex[:10]
    plain, percent, failed = await _create(
        [f"Learn SQL {token}", f"Learn 100% of SQL {token}", f"Learn sql joins {token}"]
    )
    async with loopsafe.db.session() as session:
        await repositories.update_roadmap(session, failed, status=RoadmapStatus.failed)

    async def ids(**params: str) -> list[str]:
        response = await client.get("/api/v1/roadmaps", params=params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()]

    assert await ids(q=token) == [str(failed), str(percent), str(plain)]
    assert await ids(q=f"sql {token}") == [str(percent), str(plain)]  # any case
    assert await ids(q=token, status="failed") == [str(failed)]
    assert await ids(q=token, status="completed") == []
    # % and _ are text, not wildcards.
    assert await ids(q=f"100% of SQL {token}") == [str(percent)]
    assert await ids(q=f"Learn_SQL {token}") == []


@pytest.mark.parametrize(
    ("params", "where", "message"),
    [
        ({"after": "not-a-roadmap"}, "query.after", "Input should be a valid UUID"),
        ({"status": "done"}, "query.status", "Input should be 'pending', 'analyzing'"),
        ({"q": ""}, "query.q", "String should have at least 1 character"),
        ({"q": "x" * 201}, "query.q", "String should have at most 200 characters"),
        ({"q": "SQL\x00joins"}, "query.q", "String should match pattern"),
        ({"q": "SQL\x1bjoins"}, "query.q", "String should match pattern"),
        ({"limit": "101"}, "query.limit", "Input should be less than or equal to 100"),
    ],
)
async def test_bad_list_parameters_get_422_naming_them(
    client: httpx.AsyncClient, params: dict[str, str], where: str, message: str
) -> None:
    response = await client.get("/api/v1/roadmaps", params=params)
    assert response.status_code == 422
    details = [(".".join(map(str, d["loc"])), d["msg"]) for d in response.json()["detail"]]
    assert any(loc == where and msg.startswith(message) for loc, msg in details), details


async def test_a_page_after_a_deleted_roadmap_is_a_404_saying_to_start_again(
    client: httpx.AsyncClient,
) -> None:
    missing = uuid.uuid4()
    response = await client.get("/api/v1/roadmaps", params={"after": str(missing)})
    assert response.status_code == 404
    assert response.json() == {
        "detail": f"roadmap {missing} (where the page should start) not found; it was deleted: "
        "list again from the first page"
    }
