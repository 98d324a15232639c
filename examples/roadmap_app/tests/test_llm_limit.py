"""LLM_CONCURRENCY as one limit for the whole deployment: real workers against a provider that
answers 429 above its cap finish every roadmap without a single 429."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from roadmap_testkit import (
    FULL_TIER,
    SLOW_TIER_REASON,
    Stack,
    delete_keys,
    fake_openai,
    make_env,
    wait_for_status,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]

CAP = 2


@pytest.fixture
def capped_provider(tmp_path: Path) -> Iterator[str]:
    """The fake OpenAI server, refusing (429 + Retry-After) more than CAP calls at once."""
    log = tmp_path / "server.log"
    with fake_openai(log, FAKE_OPENAI_MAX_CONCURRENCY=str(CAP), FAKE_OPENAI_LATENCY_MS="30") as url:
        yield url


@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_workers_share_llm_concurrency_and_no_concept_meets_a_429(
    capped_provider: str, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"llmcap{uuid.uuid4().hex[:8]}:"
    env = make_env(
        database_url,
        redis_url,
        prefix,
        LLM_PROVIDER="openai",
        LLM_BASE_URL=capped_provider,
        LLM_API_KEY="test-key",
        LLM_CONCURRENCY=str(CAP),
        LLM_RETRIES="0",  # a single 429 would fail its concept, and so its roadmap
    )
    stack = Stack(env, tmp_path, name="llmcap")
    try:
        stack.start_api()
        # Prefork children: each roadmap's content job runs in one of them with CAP concepts in
        # flight, so the two roadmaps alone make twice the calls the provider accepts.
        stack.start_worker("all", ["workflow", "content", "logs"], concurrency=4)
        stack.wait_ready()
        with stack.client() as client:
            ids = [
                client.post("/api/v1/roadmaps", json={"goal": goal}).json()["task_id"]
                for goal in ("Learn Go", "Learn SQL")
            ]
            finished = [wait_for_status(client, i, "completed", "failed", timeout=180) for i in ids]
        assert [roadmap["error"] for roadmap in finished] == [None, None], stack.logs()
        stats = httpx.get(f"{capped_provider}/stats", timeout=10).json()
        assert stats["rejected"] == 0
        assert stats["max_in_flight"] <= CAP
        assert stats["served"] > 100  # both roadmaps' calls went through the capped provider
    finally:
        stack.stop()
        delete_keys(redis_url, prefix)
