"""Helpers shared by the app's tests: process stacks, polling, SSE reading, SQL assertions."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg

from roadmap_app.demo import iter_sse
from roadmap_app.processes import (
    ManagedProcess,
    api_command,
    free_port,
    wait_for_http,
    worker_command,
)

# Small latencies keep the suite fast; concurrency stays > 1 so ordering and batching are real.
FAST_LLM = {
    "LLM_PROVIDER": "offline",
    "LLM_LATENCY_MS": "5",
    "LLM_JITTER_MS": "5",
    "LLM_FAILURE_RATE": "0",
    "LLM_CONCURRENCY": "4",
    "LLM_RETRIES": "2",
    "CONTENT_BATCH_SIZE": "4",
}
#: ``LOOPSAFE_TEST_TIER=full`` (CI's first suite stage) also runs the slow tier: the fault suite,
#: schemathesis with its whole budget, and end-to-end runs whose ground the quick tier covers
#: more cheaply. ``make test`` alone runs the quick tier.
FULL_TIER = os.environ.get("LOOPSAFE_TEST_TIER", "") == "full"
SLOW_TIER_REASON = "slow tier: runs with LOOPSAFE_TEST_TIER=full (as CI does)"

# A developer's own provider settings must not reach the app the tests start.
_SCRUBBED = (
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "LLM_PROVIDER_INTENT",
    "LLM_PROVIDER_CURRICULUM",
    "LLM_PROVIDER_CONTENT",
    "CELERY_BROKER_URL",
)


@contextlib.contextmanager
def fake_openai(log_path: Path, ready_within: float = 30, **env: str) -> Iterator[str]:
    """Run tests/fake_openai_server.py (its ``FAKE_OPENAI_*`` knobs in `env`); yields its /v1 URL.

    Also the contention lab's capped provider."""
    port = free_port()
    server = ManagedProcess(
        "fake-openai",
        [sys.executable, "-m", "uvicorn", "fake_openai_server:app", "--port", str(port),
         "--app-dir", str(Path(__file__).parent), "--log-level", "warning"],
        env={**os.environ, **env},
        log_path=log_path,
    ).start()  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/docs", timeout=ready_within, process=server)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.stop(timeout=5)


def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove what Celery left under `prefix` (queue bindings) on a shared Redis."""
    import redis

    with redis.Redis.from_url(redis_url) as client:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)


def make_env(
    database_url: str, redis_url: str, key_prefix: str, **overrides: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(FAST_LLM)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        ROADMAP_KEY_PREFIX=key_prefix,
        DATABASE_MAX_CONNECTIONS="60",
        LOOPSAFE_PROCESSES="12",
        PYTHONUNBUFFERED="1",
        # Short leases and a quick sweeper: a killed worker's job is taken over within seconds.
        JOB_LEASE_S="2",
        SWEEP_INTERVAL_S="1",
    )
    env.update(overrides)
    return env


def query(
    database_url: str, sql: str, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run one query on a short-lived synchronous connection (assertions in process tests)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


# Every process a Stack started. A test stopped by its deadline (pytest-timeout) in the middle of
# its teardown once left its API running after the run: whatever is still alive at exit is
# killed, so nothing a test starts outlives the run.
_started: list[ManagedProcess] = []


def _kill_leftovers() -> None:
    for process in _started:
        if process.alive:
            with contextlib.suppress(Exception):
                process.kill()


atexit.register(_kill_leftovers)


class Stack:
    """The app as real processes: uvicorn plus Celery prefork workers, each replaceable."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, *, name: str) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.name = name
        self.workers: dict[str, ManagedProcess] = {}
        self.api: ManagedProcess | None = None
        self.base_url = ""
        self._count = 0

    def start_api(self) -> None:
        port = free_port()
        self.api = ManagedProcess(
            f"{self.name}-api", api_command(host="127.0.0.1", port=port),
            env=self.env, log_path=self.log_dir / f"{self.name}-api.log",
        ).start()  # fmt: skip
        _started.append(self.api)
        self.base_url = f"http://127.0.0.1:{port}"

    def start_worker(
        self, role: str, queues: list[str], *, concurrency: int = 2, beat: bool = False, **env: str
    ) -> ManagedProcess:
        """Start a worker (replacing any previous one of `role`); returns once it consumes."""
        old = self.workers.pop(role, None)
        if old is not None:
            old.stop(timeout=10)
        self._count += 1
        worker = ManagedProcess(
            f"{self.name}-{role}-{self._count}",
            worker_command(
                queues,
                concurrency=concurrency,
                name=f"{role}{self._count}-{self.name}@%h",
                beat=beat,
            ),
            env={**self.env, **env},
            log_path=self.log_dir / f"{self.name}-{role}-{self._count}.log",
        ).start()
        _started.append(worker)
        self.workers[role] = worker
        worker.wait_for_log(" ready.", timeout=60)
        return worker

    def wait_ready(self) -> None:
        assert self.api is not None
        wait_for_http(f"{self.base_url}/health", timeout=60, process=self.api)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.terminate()  # all at once: the warm shutdowns run in parallel
        for worker in self.workers.values():
            worker.stop(timeout=10)
        if self.api is not None:
            self.api.stop(timeout=10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30.0)

    def logs(self) -> str:
        parts = [p for p in [self.api, *self.workers.values()] if p is not None]
        return "\n".join(f"--- {p.name} ---\n{p.tail(40)}" for p in parts)


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(interval)


def wait_for_status(
    client: httpx.Client, roadmap_id: str, *statuses: str, timeout: float = 60.0
) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()
        return body if body["status"] in statuses else None

    result: dict[str, Any] = wait_for(
        current, timeout=timeout, interval=0.1, what=f"status in {statuses}"
    )
    return result


def read_events(
    client: httpx.Client, roadmap_id: str, *, until: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """Read the roadmap's SSE stream until it ends (or `until(event)` is true)."""
    events: list[dict[str, Any]] = []
    with client.stream(
        "GET", f"/api/v1/roadmaps/{roadmap_id}/events", timeout=httpx.Timeout(30.0)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in iter_sse(response.iter_lines()):
            events.append(event)
            if until is not None and until(event):
                break
    return events
