"""The OpenAPI document tells the truth: status codes, validation rules, links, allowed methods."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from roadmap_app.api.schemas import ReviewIn, RoadmapCreate
from roadmap_app.main import create_app

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROADMAPS = "/api/v1/roadmaps"


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    app = create_app()
    document = app.openapi()
    app.state.celery.close()
    return document


def _operation(openapi: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for path in openapi["paths"].values():
        for operation in path.values():
            if operation["operationId"] == operation_id:
                return dict(operation)
    raise AssertionError(f"no operation {operation_id!r}")


@pytest.mark.parametrize(
    ("operation_id", "codes"),
    [
        ("create_roadmap", {"202", "413", "415", "422", "503"}),
        ("list_roadmaps", {"200", "404", "422"}),
        ("get_roadmap", {"200", "404", "422"}),
        ("roadmap_events", {"200", "404", "422", "503"}),
        ("review_roadmap", {"202", "404", "409", "413", "415", "422", "503"}),
        ("resume_roadmap", {"202", "404", "409", "413", "415", "422", "503"}),
        ("cancel_roadmap", {"202", "404", "409", "413", "415", "422"}),
        ("delete_roadmap", {"204", "404", "409", "413", "415", "422"}),
        ("regenerate_concept", {"202", "404", "409", "413", "415", "422", "503"}),
    ],
)
def test_every_status_code_a_route_answers_is_documented_with_its_body(
    openapi: dict[str, Any], operation_id: str, codes: set[str]
) -> None:
    responses = _operation(openapi, operation_id)["responses"]
    assert set(responses) == codes
    for code in codes - {"200", "202", "204", "422"}:
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorOut"}


def test_the_event_stream_documents_its_limit_and_when_to_retry(openapi: dict[str, Any]) -> None:
    unavailable = _operation(openapi, "roadmap_events")["responses"]["503"]
    assert "SSE_MAX_SUBSCRIBERS" in unavailable["description"]
    assert unavailable["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
    create = _operation(openapi, "create_roadmap")["responses"]["503"]
    assert create["description"].startswith("The job queue (broker) is unreachable")


@pytest.mark.parametrize(
    ("operation_id", "status", "id_expression"),
    [
        ("create_roadmap", "202", "$response.body#/task_id"),
        ("get_roadmap", "200", "$response.body#/id"),
    ],
)
def test_responses_carrying_a_roadmap_id_link_to_the_operations_that_take_it(
    openapi: dict[str, Any], operation_id: str, status: str, id_expression: str
) -> None:
    links = _operation(openapi, operation_id)["responses"][status]["links"]
    targets = {link["operationId"] for link in links.values()}
    assert targets == {
        "get_roadmap",
        "roadmap_events",
        "review_roadmap",
        "resume_roadmap",
        "cancel_roadmap",
        "delete_roadmap",
    }
    for link in links.values():
        _operation(openapi, link["operationId"])  # the target exists
        assert link["parameters"] == {"roadmap_id": id_expression}


def _validator(openapi: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    schema = {**openapi["components"]["schemas"][name], "components": openapi["components"]}
    return jsonschema_rs.validator_for(schema)


def _accepted(model: type[RoadmapCreate] | type[ReviewIn], body: dict[str, Any]) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


@given(
    goal=st.one_of(
        st.text(max_size=210),
        st.text(alphabet=" \t\r\n\x00\x1f\x85\xa0a1_.é😀", max_size=8),
    ),
    hours=st.one_of(st.integers(-5, 90), st.floats(allow_nan=False, allow_infinity=False)),
)
def test_the_schema_accepts_exactly_the_roadmaps_the_api_accepts(
    openapi: dict[str, Any], goal: str, hours: float
) -> None:
    body = {"goal": goal, "weekly_hours": hours}
    assert _validator(openapi, "RoadmapCreate").is_valid(body) == _accepted(RoadmapCreate, body)


@given(
    approve=st.booleans(),
    feedback=st.one_of(st.none(), st.text(alphabet=" \t\n\x00\x85ab", max_size=6)),
)
def test_the_schema_states_that_a_rejection_needs_feedback(
    openapi: dict[str, Any], approve: bool, feedback: str | None
) -> None:
    body = {"approve": approve, "feedback": feedback}
    assert _validator(openapi, "ReviewIn").is_valid(body) == _accepted(ReviewIn, body)


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        (ROADMAPS, "GET, OPTIONS, POST"),
        # DELETE since issue 22 (delete a roadmap).
        (f"{ROADMAPS}/5b5c3f8e-0000-4000-8000-000000000000", "DELETE, GET, OPTIONS"),
        (f"{ROADMAPS}/5b5c3f8e-0000-4000-8000-000000000000/review", "OPTIONS, POST"),
    ],
)
async def test_options_and_405_list_every_method_of_the_path(
    client: httpx.AsyncClient, path: str, allow: str
) -> None:
    options = await client.options(path)
    assert options.status_code == 204
    assert options.headers["allow"] == allow
    refused = await client.put(path)  # no route takes PUT (DELETE is taken since issue 22)
    assert refused.status_code == 405
    assert refused.headers["allow"] == allow
    assert refused.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize("model", [RoadmapCreate, ReviewIn])
def test_the_schema_examples_are_valid_requests(
    openapi: dict[str, Any], model: type[RoadmapCreate] | type[ReviewIn]
) -> None:
    examples = openapi["components"]["schemas"][model.__name__]["examples"]
    assert examples
    for example in examples:
        assert _validator(openapi, model.__name__).is_valid(example)
        assert _accepted(model, example)
