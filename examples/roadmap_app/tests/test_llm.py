"""LLM providers: the deterministic offline one, the OpenAI-compatible one on loop-local clients."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from roadmap_testkit import fake_openai

import loopsafe.llm
from roadmap_app.config import Settings
from roadmap_app.llm import (
    AnthropicProvider,
    LLMError,
    OfflineProvider,
    OpenAIProvider,
    Prompt,
    StagedProvider,
    get_provider,
    topic_of,
)
from roadmap_app.pipeline.calls import Brief, LLMOptions, ask
from roadmap_app.pipeline.content import Tutorial, generate_material
from roadmap_app.pipeline.curriculum import Curriculum, design_curriculum
from roadmap_app.pipeline.intent import analyze_intent
from roadmap_app.processes import free_port
from roadmap_app.repositories import ConceptRef

OPTIONS = LLMOptions(retries=2, timeout_s=5.0)


def _prompt(kind: Any, **context: Any) -> Prompt:
    return Prompt(kind, f"kind={kind}", json.dumps(context), context)


@pytest.mark.parametrize(
    ("goal", "topic", "application"),
    [
        ("Learn Python for data analysis", "Python", "data analysis"),
        ("learn to cook", "cook", ""),
        ("I want to learn how to play guitar", "play guitar", ""),
        ("Kubernetes", "Kubernetes", ""),
        ("Learn machine learning", "machine learning", ""),
        ("Master SQL for reporting.", "SQL", "reporting"),
    ],
)
def test_topic_is_extracted_from_the_goal(goal: str, topic: str, application: str) -> None:
    assert topic_of(goal) == (topic, application)


async def test_offline_answers_are_deterministic_per_goal_and_concept() -> None:
    llm = OfflineProvider()
    a = await llm.complete_json(_prompt("tutorial", goal="Learn Go", concept="Goroutines"))
    b = await llm.complete_json(_prompt("tutorial", goal="Learn Go", concept="Goroutines"))
    c = await llm.complete_json(_prompt("tutorial", goal="Learn Go", concept="Channels"))
    assert a == b != c
    assert "Goroutines" in a["markdown"]


@pytest.mark.parametrize(
    ("level", "opening"),
    [("beginner", "A beginner"), ("intermediate", "An intermediate"), ("advanced", "An advanced")],
)
async def test_the_offline_intent_summary_gets_the_article_right(level: str, opening: str) -> None:
    """It wrote "A intermediate learner" (issue 22)."""
    answer = await OfflineProvider().complete_json(
        _prompt("intent", goal="Learn Go", level=level, weekly_hours=5)
    )
    assert answer["summary"].startswith(f"{opening} learner who wants to learn Go")


@pytest.mark.parametrize("level", ["beginner", "intermediate", "advanced"])
@pytest.mark.parametrize(
    "goal",
    ["Learn Python", "Learn machine learning", "Master Rust for embedded systems", "Learn to draw"],
)
async def test_typical_goals_get_20_to_40_concepts(goal: str, level: str) -> None:
    llm = OfflineProvider()
    brief = Brief(goal, level, 5)
    curriculum = await design_curriculum(
        llm, brief, await analyze_intent(llm, brief, OPTIONS), OPTIONS
    )
    assert 20 <= curriculum.concept_count <= 40
    titles = [c.title for s in curriculum.stages for m in s.modules for c in m.concepts]
    assert len(set(titles)) == len(titles)


async def test_no_offline_answer_puts_a_before_a_vowel_sound() -> None:
    """No "A intermediate learner" (issue 22), in module descriptions either."""
    llm = OfflineProvider()
    for level in ("intermediate", "advanced"):
        brief = Brief("Learn Go", level, 5)
        curriculum = await design_curriculum(
            llm, brief, await analyze_intent(llm, brief, OPTIONS), OPTIONS
        )
        text = curriculum.model_dump_json()
        assert f"for an {level} learner" in text
        assert not re.search(r"\b[Aa] (?:intermediate|advanced)\b", text)


# A goal in each script the offline model writes, what its answers must be written in, and
# words of the English templates that must not appear in them.
LANGUAGES = [
    ("学习 Python 数据分析", "[\u4e00-\u9fff]", "Python 数据分析"),
    ("日本語を学ぶ", "[\u3040-\u30ff]", "日本語"),
    ("Изучить Go для веб-разработки", "[\u0400-\u04ff]", "Go"),
    ("تعلم البرمجة", "[\u0600-\u06ff]", "البرمجة"),
    ("Μάθε Python για ανάλυση δεδομένων", "[\u0370-\u03ff]", "Python"),
]
ENGLISH_WORDS = re.compile(r"\b(?:learner|Foundations|Why it matters|documentation|example)\b")


@pytest.mark.parametrize(("goal", "script", "topic"), LANGUAGES)
async def test_the_offline_model_answers_in_the_goals_language(
    goal: str, script: str, topic: str
) -> None:
    llm = OfflineProvider()
    brief = Brief(goal, "intermediate", 5)
    intent = await analyze_intent(llm, brief, OPTIONS)
    assert intent.subject == topic
    curriculum = await design_curriculum(llm, brief, intent, OPTIONS, version=2, feedback="Más")
    assert 20 <= curriculum.concept_count <= 40
    concept = curriculum.stages[0].modules[0].concepts[0]
    ref = ConceptRef(1, "c", concept.title, concept.summary, 1, curriculum.stages[0].title)
    material = await generate_material(llm, brief, ref, OPTIONS)
    answers = {
        "intent": intent.summary + " ".join(intent.outcomes),
        "curriculum": curriculum.title + curriculum.stages[0].title + concept.summary,
        "tutorial": material.tutorial.markdown,
        "resources": " ".join(r.title for r in material.resources.resources),
        "quiz": " ".join(q.question + " ".join(q.options) for q in material.quiz.questions),
    }
    for kind, text in answers.items():
        assert len(re.findall(script, text)) >= 4, (kind, text)
        assert not ENGLISH_WORDS.search(text), (kind, text)


@pytest.mark.parametrize(
    "goal", ["Learn Python", "Apprendre le français", "Learn 中文", "Aprender Python 3"]
)
async def test_latin_script_and_mostly_latin_goals_get_english(goal: str) -> None:
    answer = await OfflineProvider().complete_json(
        _prompt("intent", goal=goal, level="beginner", weekly_hours=5)
    )
    assert answer["summary"].startswith("A beginner learner who wants to")


async def test_feedback_changes_the_curriculum() -> None:
    llm = OfflineProvider()
    brief = Brief("Learn Python", "beginner", 5)
    intent = await analyze_intent(llm, brief, OPTIONS)
    first = await design_curriculum(llm, brief, intent, OPTIONS)
    second = await design_curriculum(
        llm, brief, intent, OPTIONS, version=2, feedback="More projects"
    )
    assert first != second
    assert any(m.title == "Reviewer focus: More projects" for s in second.stages for m in s.modules)


async def test_failure_rate_one_always_fails_with_a_clear_reason() -> None:
    llm = OfflineProvider(failure_rate=1.0)
    with pytest.raises(LLMError, match=r"simulated failure for 'quiz' \(LLM_FAILURE_RATE=1\)"):
        await llm.complete_json(_prompt("quiz", goal="x", concept="y"))
    with pytest.raises(
        LLMError, match=r"^intent analysis failed after 3 attempts: offline provider"
    ):
        await analyze_intent(llm, Brief("Learn Go", "beginner", 3), OPTIONS)
    assert llm.calls == 4


async def test_fail_concepts_always_fails_the_matching_concepts_and_only_those() -> None:
    env = {
        "LLM_FAIL_CONCEPTS": "core VOCABULARY,capstone",
        "LLM_LATENCY_MS": "0",
        "LLM_JITTER_MS": "0",
    }
    llm = get_provider(Settings.from_env(env))
    brief = Brief("Learn Go", "beginner", 3)
    broken = ConceptRef(1, "core", "Core vocabulary of Go", "s", 1, "Basic building blocks")
    message = (
        r"^tutorial for 'Core vocabulary of Go' failed after 3 attempts: offline provider: "
        r"injected permanent failure for 'tutorial' of concept 'Core vocabulary of Go' "
        r"\(LLM_FAIL_CONCEPTS contains 'core VOCABULARY'\)$"
    )
    with pytest.raises(LLMError, match=message):
        await generate_material(llm, brief, broken, OPTIONS)
    for kind in ("resources", "quiz"):
        with pytest.raises(LLMError, match="contains 'capstone'"):
            await llm.complete_json(_prompt(kind, goal="Go", concept="Building the capstone"))
    healthy = ConceptRef(2, "setup", "Setting up a Go environment", "s", 1, "Orientation")
    material = await generate_material(llm, brief, healthy, OPTIONS)
    assert material.tutorial.markdown.startswith("## Setting up a Go environment")
    # Prompts about no concept (intent, curriculum) are never broken.
    assert await llm.complete_json(_prompt("intent", goal="Learn Go capstone"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_rate": 1.5}, "failure_rate must be between 0 and 1, got 1.5"),
        ({"latency_ms": -1}, "latency_ms and jitter_ms must not be negative"),
        ({"fail_concepts": ["Capstone", " "]}, "fail_concepts must not contain an empty text"),
    ],
)
def test_offline_provider_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OfflineProvider(**kwargs)


class _Scripted:
    """A provider that answers from a list (each answer once), for validation paths."""

    name = "scripted"

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    async def complete_json(self, prompt: Prompt) -> dict[str, Any]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer == "hang":
            await asyncio.sleep(10)
        return dict(answer)


async def test_ask_retries_invalid_answers_then_reports_the_last_problem() -> None:
    llm = _Scripted({"title": "x", "stages": []}, {"title": "x"}, {"title": "", "stages": [1]})
    with pytest.raises(
        LLMError,
        match=r"curriculum failed after 3 attempts: invalid answer \(title: String should have at least 1 character\)",
    ):
        await ask(llm, _prompt("curriculum"), Curriculum, OPTIONS, what="curriculum")


async def test_ask_recovers_from_one_bad_answer_and_times_out_hung_calls() -> None:
    good = await OfflineProvider().complete_json(_prompt("curriculum", goal="Learn Go"))
    recovered = await ask(
        _Scripted(LLMError("flaky"), good), _prompt("curriculum"), Curriculum, OPTIONS, what="c"
    )
    assert recovered.concept_count >= 20
    with pytest.raises(LLMError, match=r"no answer within 0.05 s \(LLM_TIMEOUT_S\)"):
        await ask(
            _Scripted("hang"),
            _prompt("curriculum"),
            Curriculum,
            LLMOptions(retries=0, timeout_s=0.05),
            what="c",
        )


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_openai(tmp_path_factory.mktemp("openai") / "server.log") as url:
        yield url


def calls(server: str, user: str) -> int:
    """How many chat completions the fake server received with this user message."""
    return int(httpx.get(f"{server}/calls", params={"user": user}, timeout=10).json())


@pytest.fixture
def openai_app_settings(openai_server: str, configured: Settings) -> Settings:
    """Settings for the OpenAI provider handed over directly: nothing in the environment."""
    return dataclasses.replace(
        configured,
        llm_provider="openai",
        llm_base_url=openai_server,
        llm_api_key="injected-key",
        llm_timeout_s=7.0,
    )


async def test_openai_provider_uses_the_settings_it_is_given(
    openai_app_settings: Settings, openai_server: str
) -> None:
    """Issue 13: the client read the process's environment instead of the injected settings."""
    provider = get_provider(openai_app_settings)
    answer = await provider.complete_json(_prompt("tutorial", goal="Learn Go", concept="Maps"))
    assert "Maps" in answer["markdown"]
    client = loopsafe.llm.get_openai()
    assert client.api_key == "injected-key"
    assert str(client.base_url) == f"{openai_server}/"
    assert client.timeout == 7.0


async def test_ask_is_the_only_retry_layer(
    openai_app_settings: Settings, openai_server: str
) -> None:
    """Issue 13: the SDK's own retries ran inside each of ask()'s attempts (9 calls for 3)."""
    user = f"ALWAYS 500 {uuid.uuid4().hex}"
    provider = get_provider(openai_app_settings)
    with pytest.raises(
        LLMError, match=r"^tutorial failed after 3 attempts: tutorial: InternalServerError"
    ):
        await ask(
            provider,
            Prompt("tutorial", "kind=tutorial", user, {}),
            Curriculum,
            OPTIONS,
            what="tutorial",
        )
    assert calls(openai_server, user) == 3


async def test_ask_has_one_deadline_for_all_its_attempts() -> None:
    """Issue 13: each attempt had a deadline of its own, so a hung provider took 3 × LLM_TIMEOUT_S."""
    llm = _Scripted("hang", "hang", "hang")
    with pytest.raises(LLMError, match=r"^c failed after 1 attempt: no answer within 0.1 s"):
        await ask(
            llm, _prompt("curriculum"), Curriculum, LLMOptions(retries=2, timeout_s=0.1), what="c"
        )
    assert len(llm.answers) == 2  # the deadline was over after the first attempt


async def test_llm_concurrency_is_one_limit_for_the_whole_deployment(
    openai_app_settings: Settings, openai_server: str
) -> None:
    """LLM_CONCURRENCY=1: while another process holds the one slot, this one sends nothing."""
    settings = dataclasses.replace(openai_app_settings, llm_concurrency=1, llm_timeout_s=0.5)
    provider = get_provider(settings)
    user = json.dumps({"goal": "Learn Go", "concept": uuid.uuid4().hex})
    prompt = Prompt("tutorial", "kind=tutorial", user, json.loads(user))
    options = LLMOptions(retries=0, timeout_s=0.5)
    async with loopsafe.llm.limit("openai"):  # what another worker's call looks like
        with pytest.raises(LLMError):
            await ask(provider, prompt, Tutorial, options, what="tutorial")
    assert calls(openai_server, user) == 0
    await ask(provider, prompt, Tutorial, options, what="tutorial")
    assert calls(openai_server, user) == 1


def test_openai_provider_gets_a_client_per_event_loop_closed_with_the_loop(
    openai_app_settings: Settings,
) -> None:
    """Two `asyncio.run` calls (as two Celery tasks would make) each get, use and close their own
    client: no "Event loop is closed" from a client that outlived its loop."""
    provider = OpenAIProvider(openai_app_settings)
    seen: list[AsyncOpenAI] = []

    async def one_call(concept: str) -> dict[str, Any]:
        seen.append(loopsafe.llm.get_openai())
        return await provider.complete_json(_prompt("tutorial", goal="Learn Go", concept=concept))

    first = asyncio.run(one_call("Goroutines"))
    second = asyncio.run(one_call("Channels"))
    assert "Goroutines" in first["markdown"]
    assert "Channels" in second["markdown"]
    assert seen[0] is not seen[1]
    assert seen[0].is_closed()  # closed when its loop ended
    assert seen[1].is_closed()


async def test_openai_provider_reports_answers_that_are_not_json(
    openai_app_settings: Settings,
) -> None:
    provider = OpenAIProvider(openai_app_settings)
    with pytest.raises(LLMError, match=r"tutorial: the model did not answer with JSON: 'Sorry"):
        await provider.complete_json(Prompt("tutorial", "kind=tutorial", "NOT JSON please", {}))


async def test_openai_provider_reports_unreachable_servers(openai_app_settings: Settings) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    provider = OpenAIProvider(dataclasses.replace(openai_app_settings, llm_base_url=unreachable))
    with pytest.raises(LLMError, match=r"^intent: APIConnectionError"):
        await provider.complete_json(_prompt("intent", goal="x"))


async def test_each_stage_asks_the_model_set_for_it_and_the_rest_llm_model(
    openai_app_settings: Settings, openai_server: str
) -> None:
    settings = dataclasses.replace(
        openai_app_settings,
        llm_model="general-model",
        llm_stage_models=(("intent", "small-model"), ("content", "writer-model")),
    )
    provider = get_provider(settings)
    asked: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for kind in ("intent", "curriculum", "tutorial", "resources", "quiz"):
            prompt = _prompt(kind, goal=f"Learn Zig {uuid.uuid4().hex}", concept="Slices")
            await provider.complete_json(prompt)
            response = await http.get(f"{openai_server}/model", params={"user": prompt.user})
            asked[kind] = response.json()
    assert asked == {
        "intent": "small-model",
        "curriculum": "general-model",  # no LLM_MODEL_CURRICULUM: LLM_MODEL
        "tutorial": "writer-model",
        "resources": "writer-model",
        "quiz": "writer-model",
    }


def test_stage_models_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {"LLM_MODEL": "m", "LLM_MODEL_CURRICULUM": " big ", "LLM_MODEL_CONTENT": "", "X": "y"}
    )
    assert settings.llm_model == "m"
    assert settings.llm_stage_models == (("curriculum", "big"),)


@pytest.fixture
def anthropic_app_settings(openai_server: str, configured: Settings) -> Settings:
    """Settings for the Anthropic provider, against the fake server's Messages API."""
    return dataclasses.replace(
        configured,
        llm_provider="anthropic",
        llm_model="claude-haiku-4-5",
        anthropic_api_key="injected-anthropic-key",
        anthropic_base_url=openai_server.removesuffix("/v1"),
        llm_timeout_s=7.0,
    )


async def _asked(server: str, prompt: Prompt) -> tuple[str, str]:
    """The API and the model the fake server was asked `prompt` through."""
    async with httpx.AsyncClient(timeout=10) as http:
        api = (await http.get(f"{server}/api", params={"user": prompt.user})).json()
        model = (await http.get(f"{server}/model", params={"user": prompt.user})).json()
    return api, model


async def test_anthropic_provider_answers_through_the_messages_api(
    anthropic_app_settings: Settings, openai_server: str
) -> None:
    provider = get_provider(anthropic_app_settings)
    assert isinstance(provider, AnthropicProvider)
    prompt = _prompt("tutorial", goal="Learn Go", concept=f"Maps {uuid.uuid4().hex}")
    answer = await provider.complete_json(prompt)
    assert "Maps" in answer["markdown"]
    assert await _asked(openai_server, prompt) == ("anthropic", "claude-haiku-4-5")
    client = loopsafe.llm.get_anthropic()
    assert client.api_key == "injected-anthropic-key"
    assert str(client.base_url).rstrip("/") == openai_server.removesuffix("/v1")
    assert client.max_retries == 0  # ask() is the only retry layer


async def test_anthropic_provider_failures_become_llm_errors_that_ask_retries(
    anthropic_app_settings: Settings, openai_server: str
) -> None:
    provider = get_provider(anthropic_app_settings)
    user = f"ALWAYS 500 {uuid.uuid4().hex}"
    with pytest.raises(
        LLMError, match=r"^tutorial failed after 3 attempts: tutorial: InternalServerError"
    ):
        await ask(
            provider,
            Prompt("tutorial", "kind=tutorial", user, {}),
            Tutorial,
            OPTIONS,
            what="tutorial",
        )
    assert calls(openai_server, user) == 3
    with pytest.raises(LLMError, match=r"tutorial: the model did not answer with JSON: 'Sorry"):
        await provider.complete_json(Prompt("tutorial", "kind=tutorial", "NOT JSON please", {}))
    unreachable = dataclasses.replace(
        anthropic_app_settings, anthropic_base_url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(LLMError, match=r"^intent: APIConnectionError"):
        await get_provider(unreachable).complete_json(_prompt("intent", goal="x"))


async def test_each_stage_can_have_a_provider_of_its_own(
    openai_app_settings: Settings, openai_server: str
) -> None:
    """LLM_PROVIDER=openai, the curriculum on Anthropic, the content offline."""
    env = {
        "LLM_BASE_URL": openai_server,
        "LLM_API_KEY": "k",
        "LLM_MODEL": "general-model",
        "LLM_PROVIDER_CURRICULUM": "anthropic",
        "LLM_MODEL_CURRICULUM": "claude-sonnet-4-6",
        "ANTHROPIC_API_KEY": "a",
        "ANTHROPIC_BASE_URL": openai_server.removesuffix("/v1"),
        "LLM_PROVIDER_CONTENT": "offline",
        "LLM_LATENCY_MS": "0",
        "LLM_JITTER_MS": "0",
    }
    settings = dataclasses.replace(
        Settings.from_env(env),
        redis_url=openai_app_settings.redis_url,
        key_prefix=openai_app_settings.key_prefix,
    )
    provider = get_provider(settings)
    assert isinstance(provider, StagedProvider)
    goal = f"Learn Zig {uuid.uuid4().hex}"
    asked = {}
    for kind in ("intent", "curriculum", "tutorial"):
        prompt = _prompt(kind, goal=goal, concept=f"Slices for {kind}")  # a user text per kind
        assert await provider.complete_json(prompt)
        asked[kind] = await _asked(openai_server, prompt)
    assert asked == {
        "intent": ("openai", "general-model"),
        "curriculum": ("anthropic", "claude-sonnet-4-6"),
        "tutorial": (None, None),  # answered offline: the server never saw it
    }
