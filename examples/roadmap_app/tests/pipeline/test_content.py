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


async def _roadmap_of(concepts: int) -> uuid.UUID:
    """A roadmap whose curriculum has exactly `concepts` concepts (modules of 5)."""
    modules = [
        {
            "title": f"Module {m}",
            "concepts": [
                {"title": f"Concept {m}.{c}", "summary": "one idea"} for c in range(1, 6)
            ],
        }
        for m in range(1, concepts // 5 + 1)
    ]
    stages = [{"title": "The only stage", "modules": modules}]
    async with loopsafe.db.session() as session:
        roadmap = await repositories.create_roadmap(
            session, goal="Learn batching", level="beginner", weekly_hours=5, review=False
        )
        assert await repositories.replace_curriculum(session, roadmap.id, stages) == concepts
        return roadmap.id


async def _write_transactions(
    monkeypatch: pytest.MonkeyPatch, llm: OfflineProvider, **batching: Any
) -> tuple[int, int]:
    """Generate a 30-concept roadmap; (content writes counted at the database call, the report's
    transaction count)."""
    roadmap_id = await _roadmap_of(30)
    writes = 0
    original = repositories.save_content

    async def counting_save(session: Any, rid: uuid.UUID, batch: Any) -> set[int]:
        nonlocal writes
        writes += 1
        return await original(session, rid, batch)

    monkeypatch.setattr(repositories, "save_content", counting_save)
    report = await generate_missing_content(
        loopsafe.db.get_database(),
        llm,
        roadmap_id,
        LLMOptions(concurrency=6),
        RecordingNotifier(),
        **batching,
    )
    monkeypatch.undo()
    assert (report.generated, report.progress.done) == (30, 30)
    return writes, report.transactions


async def test_the_batch_window_turns_a_30_concept_roadmap_into_4_transactions(
    configured: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At LLM latency concepts finish one by one: taking only what is already queued (window 0,
    the old writer) commits nearly every concept alone; a window fills batches of 8."""
    latency = {"latency_ms": 60.0, "jitter_ms": 50.0}
    alone, reported_alone = await _write_transactions(
        monkeypatch, OfflineProvider(**latency), batch_size=8, batch_window_s=0.0
    )
    batched, reported = await _write_transactions(
        monkeypatch, OfflineProvider(**latency), batch_size=8, batch_window_s=10.0
    )
    assert (batched, reported) == (4, 4)  # 8 + 8 + 8 + 6
    assert reported_alone == alone > 2 * batched


async def test_a_batch_is_committed_when_its_window_ends_before_it_is_full(
    configured: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Size OR time: with room for every concept, the window still commits as they come."""
    transactions, _ = await _write_transactions(
        monkeypatch,
        OfflineProvider(latency_ms=40.0, jitter_ms=30.0),
        batch_size=1000,
        batch_window_s=0.2,
    )
    assert 1 < transactions < 30


async def test_the_end_of_the_work_commits_the_last_batch_without_waiting_for_its_window(
    configured: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.get_running_loop().time()
    transactions, _ = await _write_transactions(
        monkeypatch, OfflineProvider(latency_ms=2.0), batch_size=1000, batch_window_s=60.0
    )
    assert transactions == 1
    assert asyncio.get_running_loop().time() - started < 30


class StallingProvider(OfflineProvider):
    """Answers for the first `answered` concepts; every call for a later concept never returns."""

    def __init__(self, answered: int) -> None:
        super().__init__(latency_ms=2.0)
        self.answered = answered
        self.started: list[str] = []
        self.quizzes = 0
        self.all_answered = asyncio.Event()

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        concept = str(prompt.context["concept"])
        if prompt.kind == "tutorial":
            self.started.append(concept)
        if self.started.index(concept) >= self.answered:
            await asyncio.Event().wait()
        answer = await super().complete_json(prompt)
        self.quizzes += prompt.kind == "quiz"
        if self.quizzes == self.answered:
            self.all_answered.set()
        return answer


async def test_a_cancelled_run_saves_the_concepts_already_generated_before_it_stops(
    configured: Settings, database_url: str
) -> None:
    """A soft time limit or a worker shutdown cancels the job mid-window: the batch the writer
    holds, and what is queued behind it, is committed before the cancellation goes on."""
    roadmap_id = await _roadmap_of(30)
    llm = StallingProvider(answered=6)
    notifier = RecordingNotifier()
    run = asyncio.create_task(
        generate_missing_content(
            loopsafe.db.get_database(),
            llm,
            roadmap_id,
            LLMOptions(concurrency=4, timeout_s=60.0),
            notifier,
            batch_size=1000,
            batch_window_s=60.0,
        )
    )
    await asyncio.wait_for(llm.all_answered.wait(), 30)
    await asyncio.sleep(0.05)  # the last answer reaches the writer
    assert _saved(database_url, roadmap_id) == []  # still inside the window
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    saved = _saved(database_url, roadmap_id)
    assert len(saved) == 6
    assert [e["done"] for e in notifier.events if e["type"] == "concept_saved"] == list(
        range(1, 7)
    )
