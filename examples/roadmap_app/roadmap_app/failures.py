"""Plain-language failure messages for learners, from the reason a job recorded for developers."""

from __future__ import annotations

__all__ = ("concept_message", "learner_message")

# The reason a job records starts with its step ("intent: …", "content: 3 of 24 concepts
# failed …"); the API answers "could not queue …" when the broker is away.
_BY_STEP = {
    "intent": "We could not analyse your goal: the AI service did not answer in time.",
    "curriculum": "We could not design a curriculum for your goal: the AI service did not "
    "answer in time.",
    "content": "Writing the content stopped before the end.",
    "resume": "Writing the content stopped before the end.",
}
_NEXT = " Everything generated so far is saved; press Resume to continue from there."


def learner_message(error: str | None, failed_concepts: int, total: int) -> str | None:
    """What a learner should read about a failure (the developer detail stays in `error`)."""
    if error is None and not failed_concepts:
        return None
    if failed_concepts:
        noun = "concept" if failed_concepts == 1 else "concepts"
        return (
            f"{failed_concepts} of {total} {noun} could not be written: the AI service kept "
            "failing for them. Every other concept is saved; press “Retry failed concepts” to "
            "try only these again."
        )
    reason = error or ""
    if reason.startswith("could not queue"):
        return (
            "The job could not be started: the job queue is unreachable right now. Try again "
            "in a minute with Resume."
        )
    step, _, detail = reason.partition(":")
    if "interrupted" in detail:
        return "Generation was interrupted (its worker stopped)." + _NEXT
    opening = _BY_STEP.get(step.strip(), "Something went wrong while generating this roadmap.")
    return opening + _NEXT


# A concept's reason is what `ask()` raised: "<part> for '<title>' failed after N attempts: <cause>".
_PART = {"tutorial": "its tutorial", "resources": "its resources", "quiz": "its quiz"}


def concept_message(reason: str) -> str:
    """Why one concept has no content, in words for the learner (its `reason` is the developer's)."""
    part = _PART.get(reason.split(" ", 1)[0], "it")
    cause = reason.partition(" failed after ")[2] or reason
    if "no answer within" in cause:
        why = "the AI service did not answer in time"
    elif "invalid answer" in cause:
        why = "the AI service's answers could not be used"
    else:
        why = "the AI service kept failing"
    return f"Not written: {why} while writing {part}. “Retry failed concepts” tries it again."
