"""Content generation: tutorial → resources → quiz per concept, concepts concurrently, batched writes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from loopsafe.db import Database
from roadmap_app import repositories
from roadmap_app.llm import LLMError, LLMProvider, Prompt
from roadmap_app.pipeline.calls import Brief, LLMOptions, ask
from roadmap_app.repositories import ConceptRef, NewContent, Progress

__all__ = (
    "ContentReport",
    "FailedConcept",
    "Fence",
    "Material",
    "Notifier",
    "Quiz",
    "Resources",
    "Tutorial",
    "generate_material",
    "generate_missing_content",
)


class Notifier(Protocol):
    async def emit(self, roadmap_id: uuid.UUID | str, type: str, **payload: Any) -> bool: ...


class Tutorial(BaseModel):
    markdown: str = Field(min_length=20)


class Resource(BaseModel):
    title: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    kind: str = "article"


class Resources(BaseModel):
    resources: list[Resource] = Field(min_length=1, max_length=10)


class QuizQuestion(BaseModel):
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2, max_length=6)
    answer: int
    explanation: str = ""

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> QuizQuestion:
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer {self.answer} is not an index into the options")
        return self


class Quiz(BaseModel):
    questions: list[QuizQuestion] = Field(min_length=1, max_length=10)


@dataclass(frozen=True)
class Material:
    tutorial: Tutorial
    resources: Resources
    quiz: Quiz

    def to_row(self, concept_id: int) -> NewContent:
        return NewContent(
            concept_id=concept_id,
            tutorial=self.tutorial.markdown,
            resources=[r.model_dump() for r in self.resources.resources],
            quiz=[q.model_dump() for q in self.quiz.questions],
        )


# Called inside every content transaction before it writes; raises to refuse the write (the
# workflow's lease check: only the job that owns the roadmap may save its content).
Fence = Callable[[AsyncSession], Awaitable[None]]


@dataclass(frozen=True)
class FailedConcept:
    concept: ConceptRef
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"concept_id": self.concept.id, "slug": self.concept.slug, "reason": self.reason}


@dataclass
class ContentReport:
    generated: int
    skipped: int
    progress: Progress
    # Database transactions that wrote content this run (the batches of the writer).
    transactions: int = 0
    # Concepts whose LLM calls failed for good this run; every other concept was saved.
    failed: list[FailedConcept] = field(default_factory=list)


_SYSTEM = "You are a patient, precise tutor. Answer with one JSON object only: "


async def generate_material(
    llm: LLMProvider,
    brief: Brief,
    concept: ConceptRef,
    options: LLMOptions,
    *,
    on_step: Notifier | None = None,
    roadmap_id: uuid.UUID | None = None,
) -> Material:
    """Tutorial, then resources and quiz built on it, for one concept."""
    context = {
        "goal": brief.goal,
        "level": brief.level,
        "concept": concept.title,
        "summary": concept.summary,
        "module": concept.module_title,
    }
    about = f"Goal: {brief.goal} ({brief.level}).\nModule: {concept.module_title}.\n"

    async def step(name: str) -> None:
        if on_step is not None and roadmap_id is not None:
            await on_step.emit(
                roadmap_id,
                "concept_step",
                concept_id=concept.id,
                stage=concept.stage_position,
                step=name,
            )

    await step("tutorial")
    tutorial = await ask(
        llm,
        Prompt(
            kind="tutorial",
            system=_SYSTEM + '{"markdown": str} — a tutorial of 300-600 words in Markdown.',
            user=f"{about}Write the tutorial for the concept '{concept.title}': {concept.summary}",
            context=context,
        ),
        Tutorial,
        options,
        what=f"tutorial for {concept.title!r}",
    )
    await step("resources")
    resources = await ask(
        llm,
        Prompt(
            kind="resources",
            system=_SYSTEM + '{"resources": [{"title": str, "url": str, "kind": str}]} — 3-5 '
            "well-known, real resources.",
            user=f"{about}Recommend resources for '{concept.title}'.",
            context=context,
        ),
        Resources,
        options,
        what=f"resources for {concept.title!r}",
    )
    await step("quiz")
    quiz = await ask(
        llm,
        Prompt(
            kind="quiz",
            system=_SYSTEM + '{"questions": [{"question": str, "options": [str], "answer": '
            'int (index of the right option), "explanation": str}]} — 3 questions.',
            user=f"{about}Quiz the learner on this tutorial:\n{tutorial.markdown[:4000]}",
            context=context,
        ),
        Quiz,
        options,
        what=f"quiz for {concept.title!r}",
    )
    return Material(tutorial, resources, quiz)


_Item = tuple[ConceptRef, Material]
# How long an interrupted job (soft time limit, worker shutdown) waits for its writer to save
# what was already generated before giving up on it: well inside Celery's 30 s to the hard limit.
_INTERRUPTED_FLUSH_S = 10.0


async def _next_batch(
    queue: asyncio.Queue[_Item | None], size: int, window_s: float
) -> tuple[list[_Item], bool]:
    """Up to `size` finished concepts: the next to arrive, then those that follow within
    `window_s` of it; and whether the end of the work came with them."""
    first = await queue.get()
    if first is None:
        return [], True
    batch = [first]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window_s
    while len(batch) < size:
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(queue.get(), remaining)
            except asyncio.TimeoutError:
                break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


async def _write_batches(
    db: Database,
    roadmap_id: uuid.UUID,
    queue: asyncio.Queue[_Item | None],
    batch_size: int,
    window_s: float,
    progress: Progress,
    notifier: Notifier,
    fence: Fence | None,
) -> tuple[int, int]:
    """The single writer: commit finished concepts in batches, then announce each one saved;
    (concepts saved, transactions) once the end arrives.

    One writer per job bounds the job's database use to one connection however many LLM calls
    run at once, and publishing only after commit means progress never runs ahead of the data.
    The window makes batches real: at LLM latency concepts finish one by one, and taking only
    what is already queued committed almost every concept alone.
    """
    written = transactions = 0
    finished = False
    while not finished:
        batch, finished = await _next_batch(queue, batch_size, window_s)
        if not batch:
            break
        rows = [material.to_row(concept.id) for concept, material in batch]

        async def save(session: AsyncSession, rows: Sequence[NewContent] = rows) -> set[int]:
            if fence is not None:
                await fence(session)
            return await repositories.save_content(session, roadmap_id, rows)

        inserted = await db.run_in_transaction(save)
        transactions += 1
        for concept, _ in batch:
            if concept.id not in inserted:
                continue  # saved meanwhile by another run of this job: already counted
            written += 1
            await _announce(roadmap_id, concept, progress, notifier)
    return written, transactions


async def _flush(
    writer: asyncio.Task[tuple[int, int]],
    queue: asyncio.Queue[_Item | None],
    leftovers: list[_Item],
    timeout: float | None,
) -> None:
    """Hand the writer what the stopped producers still held, then the end, and wait (at most
    `timeout`) until it has saved everything; a writer still busy then is cancelled."""

    async def hand_over() -> None:
        for item in [*leftovers, None]:
            await queue.put(item)

    handing = asyncio.ensure_future(hand_over())
    try:
        # The writer, not the hand-over: a writer that died leaves a full queue nobody empties.
        await asyncio.wait({writer}, timeout=timeout)
    finally:
        handing.cancel()
        writer.cancel()  # no-op once it is done
        await asyncio.gather(handing, writer, return_exceptions=True)


async def _announce(
    roadmap_id: uuid.UUID, concept: ConceptRef, progress: Progress, notifier: Notifier
) -> None:
    """Count one concept as saved and tell the listeners."""
    progress.done += 1
    stage = concept.stage_position
    progress.stage_done[stage] = progress.stage_done.get(stage, 0) + 1
    await notifier.emit(
        roadmap_id,
        "concept_saved",
        concept_id=concept.id,
        slug=concept.slug,
        title=concept.title,
        stage=stage,
        done=progress.done,
        total=progress.total,
        stage_done=progress.stage_done[stage],
        stage_total=progress.stage_total.get(stage, 0),
    )


async def generate_missing_content(
    db: Database,
    llm: LLMProvider,
    roadmap_id: uuid.UUID,
    options: LLMOptions,
    notifier: Notifier,
    *,
    batch_size: int = 8,
    batch_window_s: float = 2.0,
    hold_connections: int | None = None,
    fence: Fence | None = None,
) -> ContentReport:
    """Generate and save content for every concept of the roadmap that has none yet.

    At most `options.concurrency` concepts are in flight. A concept whose LLM calls fail for
    good (`LLMError`) is listed in the report's `failed` and the others still finish, so a
    resume only has those left to do. Finished concepts are committed `batch_size` at a time, or
    `batch_window_s` after the first of a batch. Any other error, or a cancellation, stops the
    run; whatever was finished is still saved first (the checkpoint a resume starts from).
    `fence` runs in every write transaction.

    With `hold_connections` (``CONTENT_WRITE_MODE=per-concept``) each concept instead opens its
    transaction first and keeps it, and its connection, across its three LLM calls, at most
    `hold_connections` concepts at a time: the original design, whose held connections starve
    the API behind a transaction pooler; kept so benchmarks can measure against it.
    """
    async with db.session() as session:
        roadmap = await repositories.get_roadmap(session, roadmap_id)
        if roadmap is None:
            raise LookupError(f"roadmap {roadmap_id} does not exist")
        brief = Brief(roadmap.goal, roadmap.level, roadmap.weekly_hours)
        missing = await repositories.concepts_without_content(session, roadmap_id)
        progress = await repositories.progress(session, roadmap_id)
    skipped = progress.done
    if not missing:
        return ContentReport(generated=0, skipped=skipped, progress=progress)

    # Bounded, so finished concepts wait for the writer instead of piling up in memory.
    queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=batch_size * 2)
    todo = iter(missing)
    hold = asyncio.Semaphore(hold_connections) if hold_connections is not None else None
    held_written = held_transactions = 0
    failed: list[FailedConcept] = []
    # Finished concepts whose producer was stopped while waiting for room in the queue.
    leftovers: list[_Item] = []

    async def material_of(concept: ConceptRef) -> Material | None:
        try:
            return await generate_material(
                llm, brief, concept, options, on_step=notifier, roadmap_id=roadmap_id
            )
        except LLMError as exc:
            failed.append(FailedConcept(concept, str(exc)[:500]))
            return None

    stopping = False

    async def produce() -> None:
        nonlocal held_written, held_transactions
        for concept in todo:  # shared iterator: each concept is taken by exactly one producer
            if stopping:
                return
            if hold is None:
                material = await material_of(concept)
                if material is None:
                    continue
                try:
                    await queue.put((concept, material))
                except asyncio.CancelledError:
                    leftovers.append((concept, material))
                    raise
                continue
            async with hold, db.session() as session:
                await session.execute(text("SELECT 1"))  # the transaction, and its connection
                material = await material_of(concept)
                if material is None:
                    continue
                if fence is not None:
                    await fence(session)
                rows = [material.to_row(concept.id)]
                inserted = await repositories.save_content(session, roadmap_id, rows)
            held_transactions += 1
            if concept.id in inserted:
                held_written += 1
                await _announce(roadmap_id, concept, progress, notifier)

    writer = asyncio.create_task(
        _write_batches(
            db, roadmap_id, queue, batch_size, batch_window_s, progress, notifier, fence
        ),
        name=f"content-writer-{roadmap_id}",
    )
    producers = {
        asyncio.create_task(produce(), name=f"content-producer-{i}")
        for i in range(min(options.concurrency, len(missing)))
    }
    failure: BaseException | None = None
    interrupted = False
    try:
        running = set(producers)
        while running and failure is None:
            done, _ = await asyncio.wait(running | {writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                # The writer only returns after the end is handed over, so now means it failed.
                failure = writer.exception() or RuntimeError("the content writer stopped early")
                break
            for task in done:
                running.discard(task)
                if task.exception() is not None and failure is None:
                    failure = task.exception()
    except BaseException:
        interrupted = True  # cancelled: a soft time limit, a shutting-down worker
        raise
    finally:
        stopping = True
        for task in producers:
            task.cancel()
        pending = set(producers)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.1)
            # A cancellation an LLM call's timeout swallowed leaves a producer blocked on the
            # full queue; with the writer gone nobody else empties it.
            while writer.done() and not queue.empty():
                queue.get_nowait()
        # Done, failed or interrupted: what was generated (and paid for) is saved first. If the
        # writer dies meanwhile (its lease was lost, the database refused) it saves no more.
        await _flush(writer, queue, leftovers, _INTERRUPTED_FLUSH_S if interrupted else None)
    try:
        generated, transactions = writer.result()
    except Exception:
        if failure is None:
            raise
        generated = transactions = 0
    if failure is not None:
        raise failure
    return ContentReport(
        generated=generated + held_written,
        skipped=skipped,
        progress=progress,
        transactions=transactions + held_transactions,
        failed=failed,
    )
