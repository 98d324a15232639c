"""Content generation: bounded concurrency, batched single-writer saves, checkpoint and resume."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from roadmap_testkit import query

import loopsafe.db
from roadmap_app import repositories
from roadmap_app.config import Settings
from roadmap_app.llm import LLMError, OfflineProvider, Prompt
from roadmap_app.pipeline.calls import Brief, LLMOptions
from roadmap_app.pipeline.content import generate_missing_content
from roadmap_app.pipeline.curriculum import design_curriculum
from roadmap_app.pipeline.intent import analyze_intent

pytestmark = [pytest.mark.postgres]


class RecordingNotifier:
    """Keeps every event instead of publishing it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def emit(self, roadmap_id: uuid.UUID | str, type: str, **payload: Any) -> bool:
        self.events.append({"type": type, **payload})
        return True


class CountingProvider(OfflineProvider):
    """The offline provider, counting calls in flight; fails for concepts named in `fail_on`."""

    def __init__(self, *, fail_on: str | None = None, latency_ms: float = 2.0) -> None:
        super().__init__(latency_ms=latency_ms, jitter_ms=latency_ms)
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_on = fail_on
        self.concepts: list[str] = []

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if prompt.kind == "tutorial":
                self.concepts.append(str(prompt.context["concept"]))
            if self.fail_on is not None and prompt.context.get("concept") == self.fail_on:
                await asyncio.sleep(0.01)
                raise LLMError("the model is down for this one")
            return await super().complete_json(prompt)
        finally:
            self.in_flight -= 1


OPTIONS = LLMOptions(retries=1, timeout_s=10.0, concurrency=4)


async def _roadmap_with_curriculum(
    goal: str = "Learn Python for data analysis",
) -> tuple[uuid.UUID, int]:
    llm = OfflineProvider()
    brief = Brief(goal, "beginner", 5)
    curriculum = await design_curriculum(
        llm, brief, await analyze_intent(llm, brief, OPTIONS), OPTIONS
    )
    async with loopsafe.db.session() as session:
        roadmap = await repositories.create_roadmap(
            session, goal=goal, level="beginner", weekly_hours=5, review=False
        )
        total = await repositories.replace_curriculum(session, roadmap.id, curriculum.as_rows())
        return roadmap.id, total


def _saved(database_url: str, roadmap_id: uuid.UUID) -> list[int]:
    rows = query(
        database_url,
        "SELECT concept_id FROM concept_content WHERE roadmap_id = %(r)s ORDER BY 1",
        {"r": roadmap_id},
    )
    return [row[0] for row in rows]


async def test_every_concept_is_saved_once_with_bounded_concurrency_and_ordered_progress(
    configured: Settings, database_url: str
) -> None:
    roadmap_id, total = await _roadmap_with_curriculum()
    llm = CountingProvider()
    notifier = RecordingNotifier()
    report = await generate_missing_content(
        loopsafe.db.get_database(), llm, roadmap_id, OPTIONS, notifier, batch_size=3
    )
    assert (report.generated, report.skipped, report.progress.done, report.progress.total) == (
        total,
        0,
        total,
        total,
    )
    assert len(_saved(database_url, roadmap_id)) == total
    assert 1 < llm.max_in_flight <= OPTIONS.concurrency
    saved = [e for e in notifier.events if e["type"] == "concept_saved"]
    assert [e["done"] for e in saved] == list(range(1, total + 1))
    assert sorted(e["concept_id"] for e in saved) == _saved(database_url, roadmap_id)
    steps = [e["step"] for e in notifier.events if e["type"] == "concept_step"]
    assert steps.count("tutorial") == steps.count("resources") == steps.count("quiz") == total


async def test_writes_are_batched_and_bounded_by_batch_size(
    configured: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    roadmap_id, total = await _roadmap_with_curriculum("Learn Rust")
    sizes: list[int] = []
    original = repositories.save_content

    async def recording_save(session: Any, rid: uuid.UUID, batch: Any) -> set[int]:
        sizes.append(len(batch))
        return await original(session, rid, batch)

    monkeypatch.setattr(repositories, "save_content", recording_save)
    await generate_missing_content(
        loopsafe.db.get_database(),
        OfflineProvider(),
        roadmap_id,
        LLMOptions(concurrency=16),
        RecordingNotifier(),
        batch_size=5,
    )
    assert sum(sizes) == total
    assert max(sizes) <= 5


async def test_a_failing_concept_is_listed_and_the_others_still_finish(
    configured: Settings, database_url: str
) -> None:
    roadmap_id, total = await _roadmap_with_curriculum("Learn Kotlin")
    async with loopsafe.db.session() as session:
        missing = await repositories.concepts_without_content(session, roadmap_id)
    doomed = missing[total // 2]
    notifier = RecordingNotifier()
    broken = await generate_missing_content(
        loopsafe.db.get_database(),
        CountingProvider(fail_on=doomed.title),
        roadmap_id,
        OPTIONS,
        notifier,
    )
    assert [(f.concept.id, f.reason) for f in broken.failed] == [
        (
            doomed.id,
            f"tutorial for '{doomed.title}' failed after 2 attempts: the model is down for this one",
        )
    ]
    kept = _saved(database_url, roadmap_id)
    assert len(kept) == broken.generated == total - 1  # one bad concept sinks nothing else
    assert doomed.id not in kept
    assert len([e for e in notifier.events if e["type"] == "concept_saved"]) == len(kept)

    llm = CountingProvider()
    report = await generate_missing_content(
        loopsafe.db.get_database(), llm, roadmap_id, OPTIONS, RecordingNotifier()
    )
    assert (report.generated, report.skipped, report.failed) == (1, len(kept), [])
    assert llm.concepts == [doomed.title]  # only the failed concept is generated again
    assert len(set(llm.concepts)) == len(llm.concepts)
    assert len(_saved(database_url, roadmap_id)) == total

    rerun = CountingProvider()
    again = await generate_missing_content(
        loopsafe.db.get_database(), rerun, roadmap_id, OPTIONS, RecordingNotifier()
    )
    assert (again.generated, again.skipped, rerun.calls) == (0, total, 0)


async def test_concurrent_runs_of_the_same_job_never_duplicate_content(
    configured: Settings, database_url: str
) -> None:
    roadmap_id, total = await _roadmap_with_curriculum("Learn Scala")
    database = loopsafe.db.get_database()
    first, second = await asyncio.gather(
        generate_missing_content(
            database, OfflineProvider(latency_ms=2), roadmap_id, OPTIONS, RecordingNotifier()
        ),
        generate_missing_content(
            database, OfflineProvider(latency_ms=2), roadmap_id, OPTIONS, RecordingNotifier()
        ),
    )
    assert first.generated + second.generated == total  # each concept counted by exactly one run
    saved = _saved(database_url, roadmap_id)
    assert len(saved) == len(set(saved)) == total


async def test_unknown_roadmap_is_a_lookup_error(configured: Settings) -> None:
    missing = uuid.uuid4()
    with pytest.raises(LookupError, match=f"roadmap {missing} does not exist"):
        await generate_missing_content(
            loopsafe.db.get_database(), OfflineProvider(), missing, OPTIONS, RecordingNotifier()
        )


async def test_per_concept_mode_holds_at_most_the_semaphore_of_connections_and_saves_all(
    configured: Settings, database_url: str
) -> None:
    """The original design (a transaction per concept across its LLM calls), kept for the lab."""
    roadmap_id, total = await _roadmap_with_curriculum("Learn Haskell")
    database = loopsafe.db.get_database()
    peak = 0

    class Watching(CountingProvider):
        async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
            nonlocal peak
            peak = max(peak, int(database.pool_status()["checked_out"]))
            return await super().complete_json(prompt)

    notifier = RecordingNotifier()
    report = await generate_missing_content(
        database, Watching(), roadmap_id, OPTIONS, notifier, hold_connections=2
    )
    assert (report.generated, report.progress.done) == (total, total)
    assert len(_saved(database_url, roadmap_id)) == total
    # Connections are held during LLM calls, two at most (the semaphore), not four (concurrency).
    assert peak == 2
    saved = [e for e in notifier.events if e["type"] == "concept_saved"]
    assert [e["done"] for e in saved] == list(range(1, total + 1))
