"""The learner's failure message: one per kind of failure, never the developer's detail."""

from __future__ import annotations

import pytest

from roadmap_app.failures import concept_message, learner_message


@pytest.mark.parametrize(
    ("error", "failed", "expected"),
    [
        (None, 0, None),
        (
            "intent: intent analysis failed after 3 attempts: connection refused",
            0,
            "We could not analyse your goal: the AI service did not answer in time.",
        ),
        (
            "curriculum: curriculum design failed after 3 attempts: timed out",
            0,
            "We could not design a curriculum for your goal",
        ),
        (
            "content: interrupted (time limit or worker shutdown); POST /resume to continue",
            0,
            "Generation was interrupted (its worker stopped).",
        ),
        (
            "could not queue generate_roadmap (OperationalError: Error 111); check that the "
            "broker (REDIS_URL) is reachable, then POST /api/v1/roadmaps/x/resume",
            0,
            "The job could not be started: the job queue is unreachable right now.",
        ),
        (
            "content: 2 of 24 concepts failed (debugging, tests); first reason: …; POST /resume "
            "retries only these",
            2,
            "2 of 24 concepts could not be written: the AI service kept failing for them.",
        ),
        ("content: 1 of 24 concepts failed (x)", 1, "1 of 24 concept could not be written"),
        ("mystery: KeyError", 0, "Something went wrong while generating this roadmap."),
    ],
)
def test_each_kind_of_failure_gets_its_own_plain_message(
    error: str | None, failed: int, expected: str | None
) -> None:
    message = learner_message(error, failed, 24)
    if expected is None:
        assert message is None
        return
    assert message is not None
    assert message.startswith(expected)
    # Developer words stay behind the page's "details" toggle.
    for jargon in ("POST", "/resume", "REDIS_URL", "OperationalError", "KeyError", "attempts"):
        assert jargon not in message
    assert "Resume" in message or "Retry failed concepts" in message


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (
            "tutorial for 'Goroutines' failed after 3 attempts: offline provider: injected "
            "permanent failure (LLM_FAIL_CONCEPTS contains 'Gor')",
            "Not written: the AI service kept failing while writing its tutorial.",
        ),
        (
            "quiz for 'Invalid answer handling' failed after 1 attempt: no answer within 60 s "
            "(LLM_TIMEOUT_S)",
            "Not written: the AI service did not answer in time while writing its quiz.",
        ),
        (
            "resources for 'No answer within reach' failed after 3 attempts: invalid answer "
            "(resources.0.url: Field required)",
            "Not written: the AI service's answers could not be used while writing its resources.",
        ),
        ("KeyError: 'markdown'", "Not written: the AI service kept failing while writing it."),
    ],
)
def test_a_failed_concept_gets_a_plain_reason_naming_the_part_that_failed(
    reason: str, expected: str
) -> None:
    message = concept_message(reason)
    assert message.startswith(expected)
    assert message.endswith("“Retry failed concepts” tries it again.")
    for jargon in ("LLM_", "attempt", "KeyError", "Field required"):
        assert jargon not in message
