"""Settings read from the environment, validated once, with errors that name the variable."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from loopsafe.db import BudgetPlan

__all__ = ("LLM_STAGES", "RENAMED_VARIABLES", "Settings", "SettingsError", "get_settings")

LLMProviderName = Literal["offline", "openai", "anthropic"]
_PROVIDERS: tuple[LLMProviderName, ...] = ("offline", "openai", "anthropic")
# The pipeline's stages, each of which may have a model and a provider of its own.
LLM_STAGES = ("intent", "curriculum", "content")
# LLM_MODEL's default, by provider.
_DEFAULT_MODELS = {
    "offline": "gpt-4o-mini",
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
}
PoolerName = Literal["transaction", "session"]
ContentWrites = Literal["batched", "per-concept"]


class SettingsError(ValueError):
    """An environment variable holds a value the app cannot use."""


# Variables of the app this one grew from, which operators may still set: each is refused at
# start-up with what to set instead, never silently ignored (issue 22).
RENAMED_VARIABLES = {
    "DB_POOL_SIZE": "DATABASE_POOL_SIZE (a fixed pool; better, DATABASE_MAX_CONNECTIONS: the "
    "budget every process shares)",
    "DB_MAX_OVERFLOW": "DATABASE_MAX_OVERFLOW (with DATABASE_POOL_SIZE)",
    "UVICORN_WORKERS": "WEB_CONCURRENCY (API processes started by `serve`)",
    "MAX_DB_CONCURRENT": "CONTENT_DB_SEMAPHORE with CONTENT_WRITE_MODE=per-concept (by default a "
    "content job writes through one connection)",
}


def _refuse_renamed(env: Mapping[str, str]) -> None:
    old = sorted(name for name in RENAMED_VARIABLES if name in env)
    if old:
        raise SettingsError(
            "; ".join(f"{name} is not read any more: set {RENAMED_VARIABLES[name]}" for name in old)
        )


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    parse: Callable[[str], float],
    *,
    low: float,
    high: float,
) -> float:
    """`env[name]` read with `parse` (`int` or `float`) within [low, high]; `default` when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    # `:g` drops a float's ".0" (1.0 → "1") but would print a large int as "1e+06".
    span = f"between {low:g} and {high:g}" if parse is float else f"between {low} and {high}"
    try:
        value = parse(raw)
    except ValueError:
        kind = "a number" if parse is float else "a whole number"
        raise SettingsError(f"{name} must be {kind} {span}, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be {span}, got {raw!r}")
    return value


# The numeric settings: field → (variable, how to parse it, lowest, highest).
_NUMBERS: dict[str, tuple[str, Callable[[str], float], float, float]] = {
    "database_max_connections": ("DATABASE_MAX_CONNECTIONS", int, 2, 100_000),
    "processes": ("LOOPSAFE_PROCESSES", int, 1, 10_000),
    "loops_per_process": ("LOOPSAFE_LOOPS_PER_PROCESS", int, 1, 1_000),
    "llm_latency_ms": ("LLM_LATENCY_MS", int, 0, 600_000),
    "llm_jitter_ms": ("LLM_JITTER_MS", int, 0, 600_000),
    "llm_failure_rate": ("LLM_FAILURE_RATE", float, 0.0, 1.0),
    "llm_concurrency": ("LLM_CONCURRENCY", int, 1, 256),
    "llm_retries": ("LLM_RETRIES", int, 0, 10),
    "llm_timeout_s": ("LLM_TIMEOUT_S", float, 0.1, 3600.0),
    "content_batch_size": ("CONTENT_BATCH_SIZE", int, 1, 1000),
    "content_batch_window_s": ("CONTENT_BATCH_WINDOW_S", float, 0.0, 60.0),
    "content_db_semaphore": ("CONTENT_DB_SEMAPHORE", int, 1, 1000),
    "database_pool_timeout_s": ("DATABASE_POOL_TIMEOUT_S", float, 0.1, 600.0),
    "database_max_overflow": ("DATABASE_MAX_OVERFLOW", int, 0, 1000),
    "event_timeout_s": ("EVENT_TIMEOUT_S", float, 0.05, 60.0),
    "job_lease_s": ("JOB_LEASE_S", float, 1.0, 3600.0),
    "sweep_interval_s": ("SWEEP_INTERVAL_S", float, 0.5, 3600.0),
    "sse_max_subscribers": ("SSE_MAX_SUBSCRIBERS", int, 1, 100_000),
}


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the app; build it with `Settings.from_env()`."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/roadmap"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Prepended to Celery's Redis keys and to event channels, so several deployments (or test
    # sessions) can share one Redis server without taking each other's jobs.
    key_prefix: str = ""
    database_max_connections: int = 40
    processes: int = 6
    loops_per_process: int = 1
    llm_provider: LLMProviderName = "offline"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    # LLM_MODEL_INTENT, LLM_MODEL_CURRICULUM, LLM_MODEL_CONTENT: a model per stage (a small one
    # for intent analysis, a strong one for the curriculum…); unset, a stage uses LLM_MODEL.
    llm_stage_models: tuple[tuple[str, str], ...] = ()
    # LLM_PROVIDER_INTENT, LLM_PROVIDER_CURRICULUM, LLM_PROVIDER_CONTENT: a provider per stage
    # (LLM_PROVIDER for a stage without one); a stage on another provider than LLM_PROVIDER
    # names its model in LLM_MODEL_<STAGE>.
    llm_stage_providers: tuple[tuple[str, LLMProviderName], ...] = ()
    # The Anthropic provider's key and server (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL; unset:
    # Anthropic's API). LLM_API_KEY and LLM_BASE_URL are the OpenAI-compatible provider's.
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    llm_latency_ms: int = 300
    llm_jitter_ms: int = 200
    llm_failure_rate: float = 0.0
    # LLM_FAIL_CONCEPTS: offline provider only, a fault to inject: every call about a concept
    # whose title contains one of these texts fails, however often it is retried.
    llm_fail_concepts: tuple[str, ...] = ()
    llm_concurrency: int = 6
    llm_retries: int = 2
    llm_timeout_s: float = 60.0
    # LLM_LIMIT_SCOPE=process: each process keeps LLM_CONCURRENCY to itself (what the app did
    # before loopsafe.llm), kept to reproduce the provider's 429s; "deployment" shares one limit.
    llm_limit_scope: Literal["deployment", "process"] = "deployment"
    # The content writer commits a batch once it holds `content_batch_size` concepts or
    # `content_batch_window_s` after the batch's first one arrived, whichever comes first
    # (0: only what is already waiting, so at LLM latency nearly every concept alone).
    content_batch_size: int = 8
    content_batch_window_s: float = 2.0
    # A running job owns its roadmap for this long past its last heartbeat; a job whose worker
    # died is taken over by the sweeper (every `sweep_interval_s`) once its lease has expired.
    job_lease_s: float = 60.0
    sweep_interval_s: float = 15.0
    event_timeout_s: float = 1.0
    # Open event streams (each holds a Redis subscription) one API process serves at once; more
    # are answered 503 with Retry-After.
    sse_max_subscribers: int = 200
    # How content jobs write: "batched" (one writer per job, a connection only per batch
    # commit) or "per-concept" (each concept holds a connection, inside an open transaction,
    # across its three LLM calls: the original design, kept to reproduce its starvation), bounded
    # by `content_db_semaphore` concepts per job.
    content_write_mode: ContentWrites = "batched"
    content_db_semaphore: int = 3
    # DATABASE_POOLER=transaction for PgBouncer/Supabase transaction pooling.
    database_pooler: PoolerName | None = None
    database_pool_timeout_s: float = 30.0
    # DATABASE_POOL_SIZE set: a fixed pool per loop and no budget (what the app did before
    # budgets). Otherwise LOOPSAFE_BUDGET_PLAN + LOOPSAFE_ROLE give this process its role's
    # share, or DATABASE_MAX_CONNECTIONS is shared evenly over LOOPSAFE_PROCESSES.
    database_pool_size: int | None = None
    database_max_overflow: int = 0
    budget_plan: BudgetPlan | None = None
    role: str | None = None
    # CELERY_WORKER_LOOP=process: with a threads pool (CELERY_POOL=threads under `serve`), every
    # task's coroutine runs on one loop per worker process: loopsafe.celery.install(app,
    # loop="process"), the shared-loop worker mode. "thread": a loop per thread or prefork child.
    celery_worker_loop: Literal["thread", "process"] = "thread"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default `os.environ`).

        Raises `SettingsError` naming the variable when a value is out of range or unparsable.
        """
        env = os.environ if env is None else env
        _refuse_renamed(env)
        redis_url = _text(env, "REDIS_URL", cls.redis_url)
        provider = _provider(
            env, "LLM_PROVIDER", "openai" if env.get("LLM_BASE_URL") else "offline"
        )
        stage_providers = tuple(
            (stage, _provider(env, f"LLM_PROVIDER_{stage.upper()}", provider))
            for stage in LLM_STAGES
            if env.get(f"LLM_PROVIDER_{stage.upper()}", "").strip()
        )
        stage_models = tuple(
            (stage, env[f"LLM_MODEL_{stage.upper()}"].strip())
            for stage in LLM_STAGES
            if env.get(f"LLM_MODEL_{stage.upper()}", "").strip()
        )
        api_key = env.get("LLM_API_KEY") or env.get("OPENAI_API_KEY") or None
        _check_providers(env, provider, stage_providers, dict(stage_models), api_key)
        # Injected into content prompts: they have to reach the offline provider.
        fail_concepts = _fail_concepts(env, dict(stage_providers).get("content", provider))
        pooler = _text(env, "DATABASE_POOLER", "none")
        if pooler not in ("transaction", "session", "none"):
            raise SettingsError(
                f"DATABASE_POOLER must be 'transaction', 'session' or 'none', got {pooler!r}"
            )
        write_mode = _text(env, "CONTENT_WRITE_MODE", cls.content_write_mode)
        if write_mode not in ("batched", "per-concept"):
            raise SettingsError(
                f"CONTENT_WRITE_MODE must be 'batched' or 'per-concept', got {write_mode!r}"
            )
        pool_size = int(_number(env, "DATABASE_POOL_SIZE", 0, int, low=1, high=1000)) or None
        worker_loop = _text(env, "CELERY_WORKER_LOOP", "thread")
        if worker_loop not in ("thread", "process"):
            raise SettingsError(
                f"CELERY_WORKER_LOOP must be 'thread' or 'process', got {worker_loop!r}"
            )
        plan, role = _budget_plan(env)
        scope = _text(env, "LLM_LIMIT_SCOPE", cls.llm_limit_scope)
        if scope not in ("deployment", "process"):
            raise SettingsError(f"LLM_LIMIT_SCOPE must be 'deployment' or 'process', got {scope!r}")
        numbers: dict[str, Any] = {
            field: _number(env, variable, getattr(cls, field), parse, low=low, high=high)
            for field, (variable, parse, low, high) in _NUMBERS.items()
        }
        return cls(
            database_url=_text(env, "DATABASE_URL", cls.database_url),
            redis_url=redis_url,
            broker_url=_text(env, "CELERY_BROKER_URL", redis_url),
            key_prefix=env.get("ROADMAP_KEY_PREFIX", "").strip(),
            llm_provider=provider,
            llm_base_url=env.get("LLM_BASE_URL") or None,
            llm_api_key=api_key,
            llm_model=_text(env, "LLM_MODEL", _DEFAULT_MODELS[provider]),
            llm_stage_models=stage_models,
            llm_stage_providers=stage_providers,
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=env.get("ANTHROPIC_BASE_URL") or None,
            llm_fail_concepts=fail_concepts,
            database_pooler=(
                "transaction" if pooler == "transaction" else "session" if pooler == "session" else None
            ),
            content_write_mode="per-concept" if write_mode == "per-concept" else "batched",
            database_pool_size=pool_size,
            celery_worker_loop="process" if worker_loop == "process" else "thread",
            budget_plan=plan,
            role=role,
            llm_limit_scope="process" if scope == "process" else "deployment",
            **numbers,
        )

    def provider_for(self, stage: str) -> LLMProviderName:
        """The provider of one of `LLM_STAGES`: its LLM_PROVIDER_<STAGE>, else LLM_PROVIDER."""
        return dict(self.llm_stage_providers).get(stage, self.llm_provider)

    def channel(self, roadmap_id: object) -> str:
        """The Redis pub/sub channel carrying one roadmap's progress events."""
        return f"{self.key_prefix}roadmap:{roadmap_id}:events"


def _provider(env: Mapping[str, str], name: str, default: str) -> LLMProviderName:
    value = _text(env, name, default)
    for provider in _PROVIDERS:
        if value == provider:
            return provider
    raise SettingsError(f"{name} must be 'offline', 'openai' or 'anthropic', got {value!r}")


def _check_providers(
    env: Mapping[str, str],
    provider: LLMProviderName,
    stage_providers: tuple[tuple[str, LLMProviderName], ...],
    stage_models: Mapping[str, str],
    api_key: str | None,
) -> None:
    """Every provider a stage uses has its key, and every stage its model."""
    used = {provider, *(p for _, p in stage_providers)}
    if "openai" in used and not api_key:
        raise SettingsError(
            "LLM_PROVIDER=openai needs LLM_API_KEY (any non-empty value for local servers "
            "such as Ollama or vLLM); unset LLM_BASE_URL to use the offline provider"
        )
    if "anthropic" in used and not env.get("ANTHROPIC_API_KEY"):
        raise SettingsError("the anthropic provider needs ANTHROPIC_API_KEY")
    if "anthropic" in used and "openai" not in used and env.get("LLM_BASE_URL"):
        raise SettingsError(
            "LLM_BASE_URL is the OpenAI-compatible provider's server, which no stage uses; "
            "for Anthropic's set ANTHROPIC_BASE_URL"
        )
    for stage, stage_provider in stage_providers:
        if stage_provider not in (provider, "offline") and stage not in stage_models:
            raise SettingsError(
                f"LLM_PROVIDER_{stage.upper()}={stage_provider} needs LLM_MODEL_{stage.upper()}: "
                f"LLM_MODEL names a model of LLM_PROVIDER={provider}"
            )


def _fail_concepts(env: Mapping[str, str], provider: str) -> tuple[str, ...]:
    """LLM_FAIL_CONCEPTS: comma-separated parts of concept titles, none of them empty."""
    raw = env.get("LLM_FAIL_CONCEPTS", "").strip()
    if not raw:
        return ()
    if provider != "offline":
        raise SettingsError(
            "LLM_FAIL_CONCEPTS injects failures into the offline provider only; unset it, or "
            "unset LLM_PROVIDER and LLM_BASE_URL"
        )
    texts = tuple(part.strip() for part in raw.split(","))
    if not all(texts):
        raise SettingsError(
            "LLM_FAIL_CONCEPTS must be comma-separated parts of concept titles with no empty "
            f"part (an empty part would fail every concept), got {raw!r}"
        )
    return texts


def _budget_plan(env: Mapping[str, str]) -> tuple[BudgetPlan | None, str | None]:
    """LOOPSAFE_BUDGET_PLAN (JSON or a file) and LOOPSAFE_ROLE, checked against each other."""
    raw = env.get("LOOPSAFE_BUDGET_PLAN", "").strip()
    role = env.get("LOOPSAFE_ROLE", "").strip() or None
    if not raw:
        return None, role
    try:
        plan = BudgetPlan.load(raw, source="LOOPSAFE_BUDGET_PLAN")
        if role is not None:
            plan.budget_for(role)
    except (ValueError, TypeError) as error:
        raise SettingsError(str(error)) from None
    return plan, role


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings.from_env()
