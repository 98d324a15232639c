"""LLM providers behind one small protocol: a deterministic offline one and any OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote_plus

from openai import OpenAIError

import loopsafe.llm
from roadmap_app.config import Settings, get_settings

__all__ = (
    "LLMError",
    "LLMProvider",
    "OfflineProvider",
    "OpenAIProvider",
    "Prompt",
    "PromptKind",
    "get_provider",
)

PromptKind = Literal["intent", "curriculum", "tutorial", "resources", "quiz"]


class LLMError(RuntimeError):
    """A provider could not produce a usable answer (after its own retries)."""


@dataclass(frozen=True)
class Prompt:
    """One request: text for a real model plus the structured inputs it was built from.

    The offline provider answers from `context` alone; a real model reads `system` and `user`,
    and must answer with a single JSON object.
    """

    kind: PromptKind
    system: str
    user: str
    context: Mapping[str, Any] = field(default_factory=dict)


class LLMProvider(Protocol):
    """What the pipeline needs from a language model: one JSON object per prompt."""

    name: str

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        """Answer `prompt` with a JSON object; raise `LLMError` when that is impossible."""
        ...


# --------------------------------------------------------------------------------------------
# OpenAI-compatible provider


def _limit_namespace(settings: Settings) -> str:
    """Where the LLM limit lives in Redis: one place for the deployment, or one per process."""
    namespace = f"{settings.key_prefix}roadmap:llm"
    return f"{namespace}:{os.getpid()}" if settings.llm_limit_scope == "process" else namespace


class OpenAIProvider:
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LM Studio, …).

    Each event loop gets its own client from `loopsafe.llm.get_openai()`, closed with the loop.
    `LLM_CONCURRENCY` is one limit for the whole deployment (every worker process and the API
    together, coordinated through Redis), and a 429's Retry-After holds back every process. The
    SDK does not retry: `ask()` is the only retry layer, under one deadline. Making a provider
    configures `loopsafe.llm` for this process from `settings` (the process has one deployment).
    """

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        self.stage_models = dict(settings.llm_stage_models)
        loopsafe.llm.configure(
            openai_api_key=settings.llm_api_key or "unused",
            openai_base_url=settings.llm_base_url,
            timeout=settings.llm_timeout_s,
            max_retries=0,
            limits={
                "openai": loopsafe.llm.Limit(
                    concurrency=settings.llm_concurrency,
                    max_wait=settings.llm_timeout_s,
                    processes=settings.processes,
                )
            },
            namespace=_limit_namespace(settings),
        )

    def model_for(self, kind: PromptKind) -> str:
        """The model of the prompt's stage: intent, curriculum, or content (tutorial,
        resources and quiz); `LLM_MODEL` for a stage without one of its own."""
        stage = kind if kind in ("intent", "curriculum") else "content"
        return self.stage_models.get(stage, self.model)

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        try:
            response = await loopsafe.llm.get_openai().chat.completions.create(
                model=self.model_for(prompt.kind),
                messages=[
                    {"role": "system", "content": prompt.system},
                    {"role": "user", "content": prompt.user},
                ],
                response_format={"type": "json_object"},
                temperature=0.4,
            )
        except (OpenAIError, loopsafe.llm.LimitTimeoutError) as exc:
            raise LLMError(f"{prompt.kind}: {type(exc).__name__}: {exc}") from exc
        text = (response.choices[0].message.content or "").strip() if response.choices else ""
        # Some servers wrap JSON in a markdown fence despite response_format.
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LLMError(
                f"{prompt.kind}: the model did not answer with JSON: {text[:120]!r}"
            ) from exc
        if not isinstance(answer, dict):
            raise LLMError(f"{prompt.kind}: expected a JSON object, got {type(answer).__name__}")
        return answer


# --------------------------------------------------------------------------------------------
# Offline provider


_LEAD_WORDS = re.compile(
    r"^(?:i\s+(?:want|would like)\s+to\s+|i\s+need\s+to\s+|how\s+to\s+)?"
    r"(?:learn(?:ing)?|master(?:ing)?|study(?:ing)?|understand(?:ing)?|get\s+good\s+at|"
    r"get\s+better\s+at|improve\s+(?:my|at)|become(?:\s+an?)?|pick\s+up)\s+"
    r"(?:how\s+to\s+|to\s+)?",
    re.IGNORECASE,
)
_APPLICATION = re.compile(r"\s+(?:for|to|in|with|so\s+i\s+can)\s+", re.IGNORECASE)

# (stage title, stage description, module templates). Each module: (title, concept titles).
# `{t}` is the short topic ("Python"), `{app}` what it is applied to ("data analysis").
_STAGES: tuple[tuple[str, str, tuple[tuple[str, tuple[str, str, str]], ...]], ...] = (
    (
        "Foundations",
        "Get oriented and comfortable with the basic vocabulary of {t}.",
        (
            (
                "Orientation",
                (
                    "What {t} is and where it is used",
                    "Setting up a {t} environment",
                    "Reading {t} documentation effectively",
                ),
            ),
            (
                "Basic building blocks",
                (
                    "Core vocabulary of {t}",
                    "The smallest useful {t} example",
                    "Common beginner mistakes in {t}",
                ),
            ),
            (
                "First steps",
                (
                    "A guided {t} exercise",
                    "Debugging your first {t} problems",
                    "Building a daily {t} practice habit",
                ),
            ),
        ),
    ),
    (
        "Core skills",
        "Build the techniques you will use in almost every piece of {t} work.",
        (
            (
                "Essential techniques",
                (
                    "Key techniques every {t} learner needs",
                    "Structuring your {t} work",
                    "Patterns you will meet again and again in {t}",
                ),
            ),
            (
                "Tools of the trade",
                (
                    "The standard {t} toolkit",
                    "Choosing the right tool for a {t} task",
                    "Automating repetitive {t} work",
                ),
            ),
            (
                "Quality and correctness",
                (
                    "Checking your {t} work",
                    "Feedback loops for {t}",
                    "Reading other people's {t} work",
                ),
            ),
        ),
    ),
    (
        "Applied practice",
        "Use {t} on real problems from {app}.",
        (
            (
                "Applying {t} to {app}",
                (
                    "Mapping {app} problems onto {t}",
                    "A first {app} project with {t}",
                    "Common {app} workflows in {t}",
                ),
            ),
            (
                "Projects",
                (
                    "Scoping a small {t} project",
                    "Iterating on a {t} project with feedback",
                    "Presenting your {t} results",
                ),
            ),
            (
                "Working at scale",
                (
                    "Making {t} work faster",
                    "Handling larger {t} problems",
                    "Trade-offs in real-world {t}",
                ),
            ),
        ),
    ),
    (
        "Going further",
        "Deepen your understanding of {t} and plan what comes next.",
        (
            (
                "Advanced topics",
                (
                    "Advanced {t} concepts",
                    "How {t} works under the hood",
                    "Edge cases and pitfalls in {t}",
                ),
            ),
            (
                "Ecosystem and community",
                (
                    "The {t} ecosystem",
                    "Learning from the {t} community",
                    "Staying current with {t}",
                ),
            ),
            (
                "Capstone",
                (
                    "Designing a capstone {t} project",
                    "Building the capstone",
                    "Reviewing your progress and next steps",
                ),
            ),
        ),
    ),
)

_KEY_IDEAS = (
    "Start from a concrete example, then name the general rule behind it.",
    "Most difficulties come from a small number of recurring misunderstandings.",
    "Write down what you expect before you try something; compare with what happens.",
    "Small, frequent practice beats long, rare sessions.",
    "Learn the vocabulary: naming things precisely makes them easier to reason about.",
    "Every tool has trade-offs; know what you give up as well as what you gain.",
    "Reading good examples is as valuable as producing your own.",
    "When stuck, reduce the problem until the smallest failing case is obvious.",
)

_LEVEL_HOURS = {"beginner": 1.5, "intermediate": 1.0, "advanced": 0.75}


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def topic_of(goal: str) -> tuple[str, str]:
    """Split a goal into (short topic, application): "Learn Python for data analysis" →
    ("Python", "data analysis"); the application is "" when the goal names none."""
    subject = _LEAD_WORDS.sub("", goal.strip()).strip(" .!?")
    subject = subject or goal.strip()
    parts = _APPLICATION.split(subject, maxsplit=1)
    head = parts[0].strip()
    application = parts[1].strip() if len(parts) > 1 else ""
    # Kept as typed ("machine learning", "SQL"): it mostly appears mid-sentence.
    return head[:60], application[:60]


def _topic_and_use(goal: str) -> tuple[str, str]:
    topic, application = topic_of(goal)
    return topic, application or "real projects"


def _sentence_part(text: str) -> str:
    """`text` to go mid-sentence: first letter lowered unless it starts an acronym or name."""
    text = text.strip().rstrip(".!?")
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def _fill(template: str, topic: str, application: str) -> str:
    text = template.format(t=topic, app=application)
    return text[:1].upper() + text[1:]


class OfflineProvider:
    """Deterministic answers derived from the goal and concept, with simulated latency and failures.

    `latency_ms ± jitter_ms` of `asyncio.sleep` per call makes concurrency and progress visible;
    `failure_rate` (0–1) is the chance that a call raises `LLMError`, to exercise failure handling.
    `fail_concepts` injects permanent failures: every call about a concept whose title contains
    one of these texts (case-insensitive) raises `LLMError`, however often it is retried.

    Raises `ValueError` for a rate outside 0–1, a negative latency or an empty `fail_concepts` text.
    """

    name = "offline"

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        failure_rate: float = 0.0,
        fail_concepts: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
        if latency_ms < 0 or jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must not be negative")
        if any(not text.strip() for text in fail_concepts):
            # An empty text is in every title: it would fail every concept, surely not meant.
            raise ValueError(f"fail_concepts must not contain an empty text, got {fail_concepts!r}")
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.failure_rate = failure_rate
        self.fail_concepts = tuple(text.strip() for text in fail_concepts)
        # Timing and failures are random on purpose (content is not): they model a real service.
        self._chaos = random.Random()
        self.calls = 0

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        self.calls += 1
        delay = self.latency_ms + self._chaos.uniform(-self.jitter_ms, self.jitter_ms)
        await asyncio.sleep(max(delay, 0.0) / 1000)
        if self.failure_rate and self._chaos.random() < self.failure_rate:
            raise LLMError(
                f"offline provider: simulated failure for {prompt.kind!r} "
                f"(LLM_FAILURE_RATE={self.failure_rate:g})"
            )
        ctx = prompt.context
        broken = self._broken(ctx)
        if broken is not None:
            raise LLMError(
                f"offline provider: injected permanent failure for {prompt.kind!r} of concept "
                f"{ctx['concept']!r} (LLM_FAIL_CONCEPTS contains {broken!r})"
            )
        if prompt.kind == "intent":
            return self._intent(ctx)
        if prompt.kind == "curriculum":
            return self._curriculum(ctx)
        if prompt.kind == "tutorial":
            return self._tutorial(ctx)
        if prompt.kind == "resources":
            return self._resources(ctx)
        return self._quiz(ctx)

    def _broken(self, ctx: Mapping[str, Any]) -> str | None:
        """The `fail_concepts` text the prompt's concept title contains, if any."""
        title = str(ctx.get("concept", "")).casefold()
        if not title:
            return None
        return next((t for t in self.fail_concepts if t.casefold() in title), None)

    @staticmethod
    def _intent(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        level = str(ctx.get("level", "beginner"))
        hours = int(ctx.get("weekly_hours", 5))
        topic, application = _topic_and_use(goal)
        rng = _rng("intent", goal, level)
        total_hours = {"beginner": 60, "intermediate": 45, "advanced": 35}.get(level, 50)
        return {
            "subject": topic,
            "application": application,
            "summary": (
                # "An intermediate", "An advanced": the article follows the level's sound.
                f"{'An' if level[:1] in 'aeiou' else 'A'} {level} learner who wants to "
                f"{_sentence_part(goal)}: build solid "
                f"{topic} fundamentals, then apply them to {application}."
            ),
            "outcomes": [
                f"Explain the core ideas of {topic} in your own words",
                f"Use {topic} confidently for {application}",
                f"Finish a small {topic} project end to end",
            ],
            "prerequisites": rng.sample(
                ["curiosity", "a computer", "a notebook for notes", "basic arithmetic"], k=2
            ),
            "weeks": max(2, round(total_hours / max(hours, 1))),
        }

    @staticmethod
    def _curriculum(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        level = str(ctx.get("level", "beginner"))
        feedback = str(ctx.get("feedback") or "").strip()
        version = int(ctx.get("version", 1))
        topic, named_use = topic_of(goal)
        application = named_use or "real projects"
        rng = _rng("curriculum", goal, level, version, feedback)
        hours = _LEVEL_HOURS.get(level, 1.0)
        stages: list[dict[str, Any]] = []
        for stage_no, (stage_title, stage_desc, module_pool) in enumerate(_STAGES):
            # Two or three modules per stage, three concepts each: 24–36 concepts in total.
            count = rng.choice((2, 3))
            if level == "advanced" and stage_no == 0:
                count = 2
            chosen = sorted(rng.sample(range(len(module_pool)), k=count))
            modules = [
                {
                    "title": _fill(module_pool[i][0], topic, application),
                    "description": f"{_fill(module_pool[i][0], topic, application)} "
                    f"for a {level} learner.",
                    "concepts": [
                        {
                            "title": _fill(concept, topic, application),
                            "summary": f"{_fill(concept, topic, application)}: what it is, "
                            f"why it matters for {application}, and how to practise it.",
                            "estimated_hours": round(hours * rng.choice((1, 1.5, 2)), 2),
                        }
                        for concept in module_pool[i][1]
                    ],
                }
                for i in chosen
            ]
            if feedback and stage_no == 2:
                focus = feedback[:60].rstrip(" .")
                modules.insert(
                    0,
                    {
                        "title": f"Reviewer focus: {focus}",
                        "description": f"Added after review feedback: {feedback[:200]}",
                        "concepts": [
                            {
                                "title": f"{focus}: {part} ({topic})",
                                "summary": f"Addresses the reviewer's request '{focus}'.",
                                "estimated_hours": hours * 2,
                            }
                            for part in ("fundamentals", "in practice")
                        ],
                    },
                )
            stages.append(
                {
                    "title": stage_title,
                    "description": _fill(stage_desc, topic, application),
                    "modules": modules,
                }
            )
        return {
            "title": _fill("{t} roadmap", topic, named_use)
            + (f" for {named_use}" if named_use else ""),
            "summary": f"From first steps to confident, independent work with {topic}.",
            "stages": stages,
        }

    @staticmethod
    def _tutorial(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        concept = str(ctx["concept"])
        level = str(ctx.get("level", "beginner"))
        topic, application = _topic_and_use(goal)
        rng = _rng("tutorial", goal, concept)
        ideas = rng.sample(_KEY_IDEAS, k=3)
        minutes = rng.choice((20, 30, 45))
        markdown = "\n".join(
            [
                f"## {concept}",
                "",
                f"{ctx.get('summary') or concept}",
                "",
                "### Why it matters",
                f"Your goal is to {_sentence_part(goal)}. At the {level} level, "
                f"*{_sentence_part(concept)}* is one of the pieces that makes the rest of {topic} "
                f"easier to learn and to apply to {application}.",
                "",
                "### Key ideas",
                *(f"- {idea}" for idea in ideas),
                "",
                "### Worked example",
                f"1. Pick a tiny, real task from {application}.",
                f"2. Solve it using only what this concept covers in {topic}.",
                "3. Explain each step out loud, as if teaching someone else.",
                "4. Change one detail of the task and predict what changes in the solution.",
                "",
                "### Practice",
                f"Spend {minutes} minutes on a variation of the example above, then write three "
                "sentences about what surprised you.",
            ]
        )
        return {"markdown": markdown}

    @staticmethod
    def _resources(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        concept = str(ctx["concept"])
        topic, _ = topic_of(goal)
        query = quote_plus(f"{topic} {concept}")
        return {
            "resources": [
                {
                    "title": f"Official {topic} documentation",
                    "url": f"https://duckduckgo.com/?q={quote_plus(topic + ' documentation')}",
                    "kind": "documentation",
                },
                {
                    "title": f"Encyclopedia: {concept}",
                    "url": f"https://en.wikipedia.org/w/index.php?search={query}",
                    "kind": "article",
                },
                {
                    "title": f"Video walkthroughs: {concept}",
                    "url": f"https://www.youtube.com/results?search_query={query}",
                    "kind": "video",
                },
            ]
        }

    @staticmethod
    def _quiz(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        concept = str(ctx["concept"])
        topic, application = _topic_and_use(goal)
        rng = _rng("quiz", goal, concept)
        questions: list[dict[str, Any]] = []
        stems: Sequence[tuple[str, str, tuple[str, str, str]]] = (
            (
                f"What is the best first step when learning '{concept}'?",
                "Work through one small concrete example",
                (
                    "Memorise every detail first",
                    "Skip it and come back later",
                    "Read about it without trying anything",
                ),
            ),
            (
                f"How does '{concept}' help with {application}?",
                f"It is a building block that later {topic} skills rely on",
                (
                    "It has no practical use",
                    "It replaces every other skill",
                    "It only matters for experts",
                ),
            ),
            (
                "You are stuck on an exercise. What should you do?",
                "Reduce it to the smallest case that still fails",
                (
                    "Start over from scratch",
                    "Wait until inspiration strikes",
                    "Copy a solution without reading it",
                ),
            ),
        )
        for question, right, wrong in stems:
            options = [right, *wrong]
            rng.shuffle(options)
            questions.append(
                {
                    "question": question,
                    "options": options,
                    "answer": options.index(right),
                    "explanation": right + ".",
                }
            )
        return {"questions": questions}


def get_provider(settings: Settings | None = None) -> LLMProvider:
    """The provider `settings` ask for (`LLM_PROVIDER`, or `openai` when `LLM_BASE_URL` is set)."""
    settings = settings or get_settings()
    if settings.llm_provider == "openai":
        return OpenAIProvider(settings)
    return OfflineProvider(
        latency_ms=settings.llm_latency_ms,
        jitter_ms=settings.llm_jitter_ms,
        failure_rate=settings.llm_failure_rate,
        fail_concepts=settings.llm_fail_concepts,
    )
