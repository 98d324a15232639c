"""LLM providers behind one small protocol: a deterministic offline one, any OpenAI-compatible
API and Anthropic's, one per pipeline stage if asked."""

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

from anthropic import AnthropicError
from openai import OpenAIError

import loopsafe.llm
from roadmap_app.config import LLM_STAGES, Settings, get_settings
from roadmap_app.offline_languages import Language, language_of

__all__ = (
    "AnthropicProvider",
    "LLMError",
    "LLMProvider",
    "OfflineProvider",
    "OpenAIProvider",
    "Prompt",
    "PromptKind",
    "StagedProvider",
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
# Remote providers: OpenAI-compatible and Anthropic


def _limit_namespace(settings: Settings) -> str:
    """Where the LLM limit lives in Redis: one place for the deployment, or one per process."""
    namespace = f"{settings.key_prefix}roadmap:llm"
    return f"{namespace}:{os.getpid()}" if settings.llm_limit_scope == "process" else namespace


def _remote_providers(settings: Settings) -> list[str]:
    used = {settings.provider_for(stage) for stage in LLM_STAGES}
    return sorted(used - {"offline"})


def _configure_clients(settings: Settings) -> None:
    """Configure `loopsafe.llm` for every remote provider a stage uses: its key and server, and
    `LLM_CONCURRENCY` calls in flight per provider across the deployment. The SDKs do not retry:
    `ask()` is the only retry layer, under one deadline."""
    remote = _remote_providers(settings)
    limit = loopsafe.llm.Limit(
        concurrency=settings.llm_concurrency,
        max_wait=settings.llm_timeout_s,
        processes=settings.processes,
    )
    openai_used = "openai" in remote
    loopsafe.llm.configure(
        openai_api_key=(settings.llm_api_key or "unused") if openai_used else None,
        openai_base_url=settings.llm_base_url if openai_used else None,
        anthropic_api_key=settings.anthropic_api_key if "anthropic" in remote else None,
        anthropic_base_url=settings.anthropic_base_url if "anthropic" in remote else None,
        providers=remote,
        timeout=settings.llm_timeout_s,
        max_retries=0,
        limits=dict.fromkeys(remote, limit),
        namespace=_limit_namespace(settings),
    )


def _stage_of(kind: PromptKind) -> str:
    """The pipeline stage a prompt belongs to: intent, curriculum, or content (tutorial,
    resources and quiz)."""
    return kind if kind in ("intent", "curriculum") else "content"


def _json_object(kind: PromptKind, text: str) -> dict[str, Any]:
    """The model's answer as a JSON object; `LLMError` when it is not one."""
    # Some servers wrap JSON in a markdown fence despite being asked not to.
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LLMError(f"{kind}: the model did not answer with JSON: {text[:120]!r}") from exc
    if not isinstance(answer, dict):
        raise LLMError(f"{kind}: expected a JSON object, got {type(answer).__name__}")
    return answer


class _RemoteProvider:
    """What both remote providers share: the model of each stage, and `loopsafe.llm`'s
    configuration for this process, made from `settings` (the process has one deployment)."""

    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        self.stage_models = dict(settings.llm_stage_models)
        _configure_clients(settings)

    def model_for(self, kind: PromptKind) -> str:
        """The model of the prompt's stage (`LLM_MODEL_<STAGE>`); `LLM_MODEL` for a stage
        without one of its own."""
        return self.stage_models.get(_stage_of(kind), self.model)


class OpenAIProvider(_RemoteProvider):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LM Studio, …).

    Each event loop gets its own client from `loopsafe.llm.get_openai()`, closed with the loop.
    `LLM_CONCURRENCY` is one limit for the whole deployment (every worker process and the API
    together, coordinated through Redis), and a 429's Retry-After holds back every process.
    """

    name = "openai"

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
        text = (response.choices[0].message.content or "") if response.choices else ""
        return _json_object(prompt.kind, text)


class AnthropicProvider(_RemoteProvider):
    """Anthropic's Messages API (Claude), through `loopsafe.llm.get_anthropic()`: a client per
    event loop, closed with it, under the same deployment-wide `LLM_CONCURRENCY` limit."""

    name = "anthropic"
    # Enough for the longest answer the pipeline asks for (a curriculum of 40 concepts).
    max_tokens = 8192

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        try:
            response = await loopsafe.llm.get_anthropic().messages.create(
                model=self.model_for(prompt.kind),
                max_tokens=self.max_tokens,
                system=prompt.system,
                messages=[{"role": "user", "content": prompt.user}],
            )
        except (AnthropicError, loopsafe.llm.LimitTimeoutError) as exc:
            raise LLMError(f"{prompt.kind}: {type(exc).__name__}: {exc}") from exc
        text = "".join(block.text for block in response.content if block.type == "text")
        return _json_object(prompt.kind, text)


class StagedProvider:
    """Each prompt to the provider of its stage (`LLM_PROVIDER_<STAGE>`), e.g. intent analysis
    on a small local model and the curriculum on Claude."""

    name = "staged"

    def __init__(self, by_stage: Mapping[str, LLMProvider]) -> None:
        self.by_stage = dict(by_stage)

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        return await self.by_stage[_stage_of(prompt.kind)].complete_json(prompt)


# --------------------------------------------------------------------------------------------
# Offline provider


_LEVEL_HOURS = {"beginner": 1.5, "intermediate": 1.0, "advanced": 0.75}


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def topic_of(goal: str) -> tuple[str, str]:
    """Split a goal into (short topic, application), in the goal's language: "Learn Python for
    data analysis" → ("Python", "data analysis"), "日本語を学ぶ" → ("日本語", ""); the
    application is "" when the goal names none."""
    language = language_of(goal)
    subject = language.lead.sub("", goal.strip()).strip(" .!?。！？")
    subject = subject or goal.strip()
    parts = language.application.split(subject, maxsplit=1)
    head = parts[0].strip()
    application = parts[1].strip() if len(parts) > 1 else ""
    # Kept as typed ("machine learning", "SQL"): it mostly appears mid-sentence.
    return head[:60], application[:60]


def _sentence_part(text: str) -> str:
    """`text` to go mid-sentence: first letter lowered unless it starts an acronym or name."""
    text = text.strip().rstrip(".!?。！？")
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


@dataclass(frozen=True)
class _Words:
    """What the offline answers about one goal are written with: its language, topic and use."""

    language: Language
    topic: str
    application: str  # as the goal names it, or ""

    @classmethod
    def of(cls, goal: str) -> _Words:
        return cls(language_of(goal), *topic_of(goal))

    @property
    def use(self) -> str:
        return self.application or self.language.default_use

    def fill(self, template: str, **fields: Any) -> str:
        text = template.format(t=self.topic, app=self.use, **fields)
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
        words = _Words.of(goal)
        language = words.language
        rng = _rng("intent", goal, level)
        total_hours = {"beginner": 60, "intermediate": 45, "advanced": 35}.get(level, 50)
        return {
            "subject": words.topic,
            "application": words.use,
            "summary": words.fill(
                language.intent_summary,
                learner=language.learner.get(level, language.learner["beginner"]),
                goal=_sentence_part(goal),
            ),
            "outcomes": [words.fill(outcome) for outcome in language.outcomes],
            "prerequisites": rng.sample(language.prerequisites, k=2),
            "weeks": max(2, round(total_hours / max(hours, 1))),
        }

    @staticmethod
    def _curriculum(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        level = str(ctx.get("level", "beginner"))
        feedback = str(ctx.get("feedback") or "").strip()
        version = int(ctx.get("version", 1))
        words = _Words.of(goal)
        language = words.language
        for_learner = language.for_learner.get(level, language.for_learner["beginner"])
        rng = _rng("curriculum", goal, level, version, feedback)
        hours = _LEVEL_HOURS.get(level, 1.0)
        stages: list[dict[str, Any]] = []
        for stage_no, (stage_title, stage_desc, module_pool) in enumerate(language.stages):
            # Two or three modules per stage, three concepts each: 24–36 concepts in total.
            count = rng.choice((2, 3))
            if level == "advanced" and stage_no == 0:
                count = 2
            chosen = sorted(rng.sample(range(len(module_pool)), k=count))
            modules = []
            for i in chosen:
                title = words.fill(module_pool[i][0])
                modules.append(
                    {
                        "title": title,
                        "description": words.fill(
                            language.module_description, module=title, for_learner=for_learner
                        ),
                        "concepts": [
                            {
                                "title": words.fill(concept),
                                "summary": words.fill(
                                    language.concept_summary, concept=words.fill(concept)
                                ),
                                "estimated_hours": round(hours * rng.choice((1, 1.5, 2)), 2),
                            }
                            for concept in module_pool[i][1]
                        ],
                    }
                )
            if feedback and stage_no == 2:
                focus = feedback[:60].rstrip(" .")
                modules.insert(
                    0,
                    {
                        "title": words.fill(language.reviewer_module, focus=focus),
                        "description": words.fill(
                            language.reviewer_description, feedback=feedback[:200]
                        ),
                        "concepts": [
                            {
                                # The reviewer's words as typed ("more projects"), not capitalised.
                                "title": language.reviewer_concept.format(
                                    focus=focus, part=part, t=words.topic
                                ),
                                "summary": words.fill(language.reviewer_summary, focus=focus),
                                "estimated_hours": hours * 2,
                            }
                            for part in language.reviewer_parts
                        ],
                    },
                )
            stages.append(
                {"title": stage_title, "description": words.fill(stage_desc), "modules": modules}
            )
        return {
            "title": words.fill(language.title_for if words.application else language.title),
            "summary": words.fill(language.curriculum_summary),
            "stages": stages,
        }

    @staticmethod
    def _tutorial(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        concept = str(ctx["concept"])
        level = str(ctx.get("level", "beginner"))
        words = _Words.of(goal)
        language = words.language
        rng = _rng("tutorial", goal, concept)
        ideas = rng.sample(language.key_ideas, k=3)
        minutes = rng.choice((20, 30, 45))
        why, key_ideas, example, practice = language.headings
        markdown = "\n".join(
            [
                f"## {concept}",
                "",
                f"{ctx.get('summary') or concept}",
                "",
                f"### {why}",
                words.fill(
                    language.why,
                    goal=_sentence_part(goal),
                    level=language.level_name.get(level, level),
                    concept=_sentence_part(concept),
                ),
                "",
                f"### {key_ideas}",
                *(f"- {idea}" for idea in ideas),
                "",
                f"### {example}",
                *(f"{n}. {words.fill(step)}" for n, step in enumerate(language.steps, start=1)),
                "",
                f"### {practice}",
                words.fill(language.practice, minutes=minutes),
            ]
        )
        return {"markdown": markdown}

    @staticmethod
    def _resources(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        concept = str(ctx["concept"])
        words = _Words.of(goal)
        language = words.language
        topic = words.topic
        query = quote_plus(f"{topic} {concept}")
        documentation, article, video = language.resources
        return {
            "resources": [
                {
                    "title": words.fill(documentation),
                    "url": "https://duckduckgo.com/?q="
                    + quote_plus(f"{topic} {language.documentation}"),
                    "kind": "documentation",
                },
                {
                    "title": words.fill(article, concept=concept),
                    "url": f"https://{language.code}.wikipedia.org/w/index.php?search={query}",
                    "kind": "article",
                },
                {
                    "title": words.fill(video, concept=concept),
                    "url": f"https://www.youtube.com/results?search_query={query}",
                    "kind": "video",
                },
            ]
        }

    @staticmethod
    def _quiz(ctx: Mapping[str, Any]) -> dict[str, Any]:
        goal = str(ctx["goal"])
        concept = str(ctx["concept"])
        words = _Words.of(goal)
        rng = _rng("quiz", goal, concept)
        questions: list[dict[str, Any]] = []
        for question, right_template, wrong in words.language.quiz:
            right = words.fill(right_template)
            options = [right, *(words.fill(w) for w in wrong)]
            rng.shuffle(options)
            questions.append(
                {
                    "question": words.fill(question, concept=concept),
                    "options": options,
                    "answer": options.index(right),
                    "explanation": right + words.language.full_stop,
                }
            )
        return {"questions": questions}


def get_provider(settings: Settings | None = None) -> LLMProvider:
    """The provider `settings` ask for (`LLM_PROVIDER`, or `openai` when `LLM_BASE_URL` is set),
    or a `StagedProvider` when a stage has a provider of its own (`LLM_PROVIDER_<STAGE>`)."""
    settings = settings or get_settings()
    made: dict[str, LLMProvider] = {}
    by_stage: dict[str, LLMProvider] = {}
    for stage in LLM_STAGES:
        name = settings.provider_for(stage)
        if name not in made:
            made[name] = _make(name, settings)
        by_stage[stage] = made[name]
    return next(iter(made.values())) if len(made) == 1 else StagedProvider(by_stage)


def _make(name: str, settings: Settings) -> LLMProvider:
    if name == "openai":
        return OpenAIProvider(settings)
    if name == "anthropic":
        return AnthropicProvider(settings)
    return OfflineProvider(
        latency_ms=settings.llm_latency_ms,
        jitter_ms=settings.llm_jitter_ms,
        failure_rate=settings.llm_failure_rate,
        fail_concepts=settings.llm_fail_concepts,
    )
