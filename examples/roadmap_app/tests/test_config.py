"""Settings from the environment: defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from roadmap_app.config import Settings, SettingsError


def test_defaults_use_the_offline_provider_and_local_servers() -> None:
    settings = Settings.from_env({})
    assert settings.llm_provider == "offline"
    assert settings.database_url.startswith("postgresql://")
    assert settings.broker_url == settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.channel("abc") == "roadmap:abc:events"
    assert (settings.content_batch_size, settings.content_batch_window_s) == (8, 2.0)
    assert settings.sse_max_subscribers == 200


def test_values_are_read_and_the_broker_follows_redis() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://cache:6379/2",
            "ROADMAP_KEY_PREFIX": "staging:",
            "LLM_LATENCY_MS": "25",
            "LLM_FAILURE_RATE": "0.25",
            "DATABASE_MAX_CONNECTIONS": "50",
            "CONTENT_BATCH_WINDOW_S": "0",
            "SSE_MAX_SUBSCRIBERS": "1000",
        }
    )
    assert settings.broker_url == "redis://cache:6379/2"
    assert (settings.llm_latency_ms, settings.llm_failure_rate) == (25, 0.25)
    assert settings.database_max_connections == 50
    assert (settings.content_batch_window_s, settings.sse_max_subscribers) == (0.0, 1000)
    assert settings.channel("abc") == "staging:roadmap:abc:events"


def test_an_llm_base_url_selects_the_openai_provider() -> None:
    settings = Settings.from_env(
        {"LLM_BASE_URL": "http://localhost:11434/v1", "LLM_API_KEY": "ollama"}
    )
    assert settings.llm_provider == "openai"
    assert settings.llm_base_url == "http://localhost:11434/v1"


def test_anthropic_is_a_provider_for_every_stage_or_for_one() -> None:
    claude = Settings.from_env({"LLM_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "a"})
    assert claude.llm_provider == "anthropic"
    assert claude.llm_model == "claude-haiku-4-5"  # LLM_MODEL's default follows the provider
    assert claude.anthropic_api_key == "a"
    assert [claude.provider_for(s) for s in ("intent", "curriculum", "content")] == [
        "anthropic"
    ] * 3
    mixed = Settings.from_env(
        {
            "ANTHROPIC_API_KEY": "a",
            "ANTHROPIC_BASE_URL": "http://claude.internal",
            "LLM_PROVIDER_CURRICULUM": "anthropic",
            "LLM_MODEL_CURRICULUM": "claude-sonnet-4-6",
        }
    )
    assert [mixed.provider_for(s) for s in ("intent", "curriculum", "content")] == [
        "offline",
        "anthropic",
        "offline",
    ]
    assert mixed.anthropic_base_url == "http://claude.internal"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LLM_FAILURE_RATE": "often"},
            "LLM_FAILURE_RATE must be a number between 0 and 1, got 'often'",
        ),
        ({"LLM_FAILURE_RATE": "1.5"}, "LLM_FAILURE_RATE must be between 0 and 1, got '1.5'"),
        ({"LLM_LATENCY_MS": "-5"}, "LLM_LATENCY_MS must be between 0 and 600000, got '-5'"),
        (
            {"LLM_CONCURRENCY": "two"},
            "LLM_CONCURRENCY must be a whole number between 1 and 256, got 'two'",
        ),
        (
            {"DATABASE_MAX_CONNECTIONS": "1"},
            "DATABASE_MAX_CONNECTIONS must be between 2 and 100000",
        ),
        (
            {"LLM_PROVIDER": "claude"},
            "LLM_PROVIDER must be 'offline', 'openai' or 'anthropic', got 'claude'",
        ),
        (
            {"LLM_PROVIDER_CURRICULUM": "claude"},
            "LLM_PROVIDER_CURRICULUM must be 'offline', 'openai' or 'anthropic', got 'claude'",
        ),
        ({"LLM_PROVIDER": "anthropic"}, "the anthropic provider needs ANTHROPIC_API_KEY"),
        (
            {"LLM_PROVIDER_CONTENT": "anthropic", "LLM_MODEL_CONTENT": "claude-haiku-4-5"},
            "the anthropic provider needs ANTHROPIC_API_KEY",
        ),
        (
            {"LLM_PROVIDER_CONTENT": "openai", "LLM_MODEL_CONTENT": "m"},
            "LLM_PROVIDER=openai needs LLM_API_KEY",
        ),
        (
            {"LLM_PROVIDER_INTENT": "anthropic", "ANTHROPIC_API_KEY": "a"},
            "LLM_PROVIDER_INTENT=anthropic needs LLM_MODEL_INTENT: LLM_MODEL names a model of "
            "LLM_PROVIDER=offline",
        ),
        (
            {"LLM_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "a", "LLM_BASE_URL": "http://x"},
            "LLM_BASE_URL is the OpenAI-compatible provider's server, which no stage uses",
        ),
        (
            {"LLM_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "a", "LLM_FAIL_CONCEPTS": "Go"},
            "LLM_FAIL_CONCEPTS injects failures into the offline provider only",
        ),
        ({"DATABASE_POOLER": "statement"}, "DATABASE_POOLER must be 'transaction', 'session' or"),
        ({"CONTENT_WRITE_MODE": "eager"}, "CONTENT_WRITE_MODE must be 'batched' or 'per-concept'"),
        ({"CONTENT_DB_SEMAPHORE": "0"}, "CONTENT_DB_SEMAPHORE must be between 1 and 1000"),
        (
            {"CONTENT_BATCH_WINDOW_S": "61"},
            "CONTENT_BATCH_WINDOW_S must be between 0 and 60, got '61'",
        ),
        (
            {"CONTENT_BATCH_WINDOW_S": "soon"},
            "CONTENT_BATCH_WINDOW_S must be a number between 0 and 60, got 'soon'",
        ),
        (
            {"SSE_MAX_SUBSCRIBERS": "0"},
            "SSE_MAX_SUBSCRIBERS must be between 1 and 100000, got '0'",
        ),
        (
            {"SSE_MAX_SUBSCRIBERS": "lots"},
            "SSE_MAX_SUBSCRIBERS must be a whole number between 1 and 100000, got 'lots'",
        ),
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE must be between 1 and 1000"),
        ({"LOOPSAFE_BUDGET_PLAN": "{bad"}, "LOOPSAFE_BUDGET_PLAN is not valid JSON"),
        (
            {
                "LOOPSAFE_BUDGET_PLAN": '{"max_connections": 20, "roles": {"web": {"processes": 1}}}',
                "LOOPSAFE_ROLE": "content",
            },
            "role 'content' is not in the budget plan",
        ),
        ({"LLM_PROVIDER": "openai"}, "LLM_PROVIDER=openai needs LLM_API_KEY"),
        (
            {"LLM_LIMIT_SCOPE": "host"},
            "LLM_LIMIT_SCOPE must be 'deployment' or 'process', got 'host'",
        ),
        (
            {"LLM_FAIL_CONCEPTS": "Core vocabulary,,Capstone"},
            "LLM_FAIL_CONCEPTS must be comma-separated parts of concept titles with no empty "
            "part (an empty part would fail every concept), got 'Core vocabulary,,Capstone'",
        ),
        (
            {"LLM_FAIL_CONCEPTS": "Capstone", "LLM_BASE_URL": "http://x/v1", "LLM_API_KEY": "k"},
            "LLM_FAIL_CONCEPTS injects failures into the offline provider only",
        ),
    ],
)
def test_bad_values_raise_settings_error_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_llm_fail_concepts_lists_title_parts_for_the_offline_provider() -> None:
    assert Settings.from_env({}).llm_fail_concepts == ()
    settings = Settings.from_env({"LLM_FAIL_CONCEPTS": " Core vocabulary , Building the capstone"})
    assert settings.llm_fail_concepts == ("Core vocabulary", "Building the capstone")


def test_deployment_knobs_for_a_transaction_pooler_and_a_role_plan() -> None:
    plan = '{"max_connections": 50, "roles": {"web": {"processes": 2, "weight": 4}, "content": {"processes": 6}}}'
    settings = Settings.from_env(
        {
            "DATABASE_POOLER": "transaction",
            "LOOPSAFE_BUDGET_PLAN": plan,
            "LOOPSAFE_ROLE": "web",
            "CONTENT_WRITE_MODE": "per-concept",
            "CONTENT_DB_SEMAPHORE": "8",
            "DATABASE_POOL_TIMEOUT_S": "2.5",
        }
    )
    assert settings.database_pooler == "transaction"
    assert settings.budget_plan is not None
    assert settings.budget_plan.budget_for(settings.role).per_process == 12  # 45 × 4/14, floored
    assert (settings.content_write_mode, settings.content_db_semaphore) == ("per-concept", 8)
    assert settings.database_pool_timeout_s == 2.5
    assert Settings.from_env({"DATABASE_POOLER": "none"}).database_pooler is None


@pytest.mark.parametrize(
    ("variable", "instead"),
    [
        ("DB_POOL_SIZE", "set DATABASE_POOL_SIZE"),
        ("DB_MAX_OVERFLOW", "set DATABASE_MAX_OVERFLOW"),
        ("UVICORN_WORKERS", "set WEB_CONCURRENCY"),
        ("MAX_DB_CONCURRENT", "set CONTENT_DB_SEMAPHORE with CONTENT_WRITE_MODE=per-concept"),
    ],
)
def test_variables_of_the_original_app_are_refused_with_the_name_to_use(
    variable: str, instead: str
) -> None:
    """An operator's old setting must not be silently ignored (issue 22)."""
    with pytest.raises(SettingsError, match=f"^{variable} is not read any more: {instead}"):
        Settings.from_env({variable: "10"})


def test_every_old_variable_set_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"UVICORN_WORKERS": "4", "DB_POOL_SIZE": "20"})
    message = str(refused.value)
    assert message.startswith("DB_POOL_SIZE is not read any more")
    assert "; UVICORN_WORKERS is not read any more: set WEB_CONCURRENCY" in message
