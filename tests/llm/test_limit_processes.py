"""limit(name) across processes: one cap for all, slots of killed processes come back, and a Redis
restart degrades to per-process shares and then coordinates again."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

import loopsafe.redis
from loopsafe.llm import Limit, LimitTimeoutError, configure, limit
from loopsafe.testing import EmbeddedRedis

from ..conftest import logged
from .conftest import stats

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.llm.limit_worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_processes_and_their_loops_share_one_cap(
    llm_server_url: str, redis_url: str, namespace: str
) -> None:
    """3 processes × 2 loops × 5 concurrent calls against a provider that answers 429 above 3."""
    tag = uuid.uuid4().hex
    args = ("burst", redis_url, llm_server_url, namespace, f"busy:3:80:{tag}", "2", "5", "3")
    workers = [worker(*args) for _ in range(3)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0]
    assert [json.loads(out) for out in outputs] == [[], [], []]
    assert stats(llm_server_url, tag) == {"served": 30, "rejected": 0, "max_in_flight": 3}


async def test_a_killed_holders_slot_comes_back_when_its_lease_ends(
    redis_url: str, namespace: str
) -> None:
    loopsafe.redis.configure(redis_url)
    configure(limits={"openai": Limit(concurrency=1, max_wait=0.3)}, namespace=namespace)
    holder = worker("hold", redis_url, namespace, "1")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LimitTimeoutError):  # the other process really holds the slot
            async with limit("openai"):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    configure(limits={"openai": Limit(concurrency=1, max_wait=30)}, namespace=namespace)
    async with limit("openai"):  # within the dead holder's 1 s lease, not never
        pass


async def test_a_redis_restart_degrades_to_a_per_process_share_then_coordinates_again(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loopsafe.llm")
    with EmbeddedRedis() as server:
        observer = redis.Redis.from_url(server.url)
        held = f"{namespace}:{{openai}}:held"
        loopsafe.redis.configure(server.url)
        # 4 slots for the deployment, 2 processes: each keeps to 2 while Redis is away.
        configure(
            limits={"openai": Limit(concurrency=4, processes=2, max_wait=2)}, namespace=namespace
        )
        async with limit("openai"):
            assert observer.zcard(held) == 1
        observer.close()
        server.stop()
        async with limit("openai"), limit("openai"):
            [degraded] = logged(caplog, "loopsafe.llm_limit_degraded")
            assert degraded["limit"] == "openai"
            assert degraded["concurrency"] == 2  # this process's share of 4 over 2 processes
            with pytest.raises(LimitTimeoutError):  # a third exceeds this process's share
                async with limit("openai"):
                    pass
            server.start()
            observer = redis.Redis.from_url(server.url)
            async with limit("openai"):
                # Coordinated again, and the two slots taken meanwhile are counted for everyone.
                assert logged(caplog, "loopsafe.llm_limit_recoordinated") == [{"limit": "openai"}]
                assert observer.zcard(held) == 3
        assert observer.zcard(held) == 0
        observer.close()
