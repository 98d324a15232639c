"""install(app, loop="process"): a threads-pool worker running every task's coroutine on one loop.

Each test starts real worker processes (``-P threads``, uvloop through ``loop_factory``) and
checks many behaviours per start-up, to keep the suite fast.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from typing import Any

import pytest
import redis

from .conftest import Worker, WorkerEnv, postgres
from .test_worker import (
    TASK,
    assert_every_resource_closed_cleanly,
    check_workload,
    connections_of,
    run_workload,
    wait_for_no_connections,
)

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

CONCURRENCY = 8
PROCESS_LOOP = {"LOOPSAFE_CELERY_LOOP": "process"}


def send(env: WorkerEnv, client: Any, name: str, *args: object) -> Any:
    return client.send_task(TASK.format(name), args=list(args), queue=env.queue)


def cleanups(env: WorkerEnv, marker: str) -> list[tuple[Any, ...]]:
    return postgres(env.postgres_url, f"SELECT note FROM {env.table} WHERE marker = %s", marker)


def wait_until(condition: Any, what: str, worker: Worker, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}\n{worker.log()}")
        time.sleep(0.05)


def peak(marker: redis.Redis, key: str) -> int:
    return int(marker.get(f"{key}:max") or 0)


def test_one_loop_serves_every_thread_and_celery_keeps_working(
    worker_env: WorkerEnv, start_worker: Any
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    worker = start_worker(
        worker_env,
        ["-P", "threads", "-c", str(CONCURRENCY)],
        {
            **PROCESS_LOOP,
            "LOOPSAFE_CELERY_REMOTE_CONTROL": "1",
            "LOOPSAFE_CELERY_DRAIN_TIMEOUT": "3",
        },
    )
    client = worker_env.client()
    marker = redis.Redis.from_url(worker_env.redis_url)
    key = f"{worker_env.queue}:flight"
    try:
        # Many tasks at once on one loop (uvloop, from loop_factory), with their own request and
        # the contextvars their thread set; prefetch never lets more run than the concurrency.
        pending = [send(worker_env, client, "where_am_i", key) for _ in range(2 * CONCURRENCY)]
        seen = [result.get(timeout=90) for result in pending]
        assert [s["request_id"] for s in seen] == [result.id for result in pending]
        assert [s["tenant"] for s in seen] == [f"tenant-of-{result.id}" for result in pending]
        assert {s["thread"] for s in seen} == {"loopsafe-process-loop"}
        assert len({s["loop"] for s in seen}) == 1
        assert next(iter({s["loop"] for s in seen})).startswith("uvloop.Loop:")
        assert {s["pid"] for s in seen} == {worker.pid}
        assert {s["loops"] for s in seen} == {1}  # one engine pool in the process
        assert 2 <= peak(marker, key) <= CONCURRENCY

        check_workload(run_workload(worker_env, client))

        # Soft and hard limits cancel just their coroutine (its finally runs); a task blocking the
        # loop is reported by name; the neighbours running meanwhile are untouched.
        soft, hard = f"soft-{uuid.uuid4().hex[:8]}", f"hard-{uuid.uuid4().hex[:8]}"
        soft_result = send(worker_env, client, "sleep_past_soft_limit", soft)
        hard_result = send(worker_env, client, "sleep_past_hard_limit", hard)
        blocker = send(worker_env, client, "block_the_loop", 1.0)
        neighbours = [send(worker_env, client, "query_and_publish", n) for n in range(4)]
        with pytest.raises(SoftTimeLimitExceeded):
            soft_result.get(timeout=60)
        with pytest.raises(TimeLimitExceeded):
            hard_result.get(timeout=60)
        assert cleanups(worker_env, soft) == cleanups(worker_env, hard) == [("cleanup ran",)]
        assert blocker.get(timeout=60) == "blocked"
        assert [r.get(timeout=60)["double"] for r in neighbours] == [0, 2, 4, 6]
        blocked = [
            line for line in worker.log().splitlines() if "loopsafe.celery_loop_blocked" in line
        ]
        assert blocked, worker.log()
        assert f"block_the_loop[{blocker.id}]" in blocked[0]

        # Celery's own machinery: self.retry, autoretry_for, exception types, sync tasks.
        retried = send(worker_env, client, "retry_twice", f"{worker_env.queue}:attempts")
        outcome = retried.get(timeout=30)
        assert (outcome["retries"], outcome["attempts"], outcome["id"]) == (2, 3, retried.id)
        assert send(worker_env, client, "flaky", f"{worker_env.queue}:flaky").get(timeout=30) == 3
        with pytest.raises(LookupError, match="no row 42"):
            send(worker_env, client, "missing_row", 42).get(timeout=30)
        assert send(worker_env, client, "add", 2, 3).get(timeout=30) == 5

        # Rate limits still space tasks out: two never overlap although eight threads are free.
        limited = f"{worker_env.queue}:limited"
        for result in [send(worker_env, client, "rate_limited", limited) for _ in range(2)]:
            result.get(timeout=60)
        assert peak(marker, limited) == 1

        # revoke(terminate=True) cancels that coroutine only: its cleanup runs, a neighbour goes on.
        revoked = f"revoked-{uuid.uuid4().hex[:8]}"
        target = send(worker_env, client, "sleep_with_cleanup", revoked, 60)
        neighbour = send(worker_env, client, "sleep_with_cleanup", f"{revoked}-n", 1)
        wait_until(lambda: marker.exists(f"{revoked}:started"), "revoke target started", worker)
        client.control.revoke(target.id, terminate=True)
        wait_until(lambda: target.state == "REVOKED", "task revoked", worker)
        wait_until(lambda: bool(cleanups(worker_env, revoked)), "revoked task's cleanup", worker)
        assert neighbour.get(timeout=60) == "slept"
        assert connections_of(worker_env) > 0  # the pool stays open between tasks

        # Warm shutdown: a task that ends in time finishes; one that would not is cancelled after
        # drain_timeout (3 s here), and its cleanup runs.
        quick, stuck = f"quick-{uuid.uuid4().hex[:8]}", f"stuck-{uuid.uuid4().hex[:8]}"
        quick_result = send(worker_env, client, "sleep_with_cleanup", quick, 1)
        send(worker_env, client, "sleep_with_cleanup", stuck, 120)
        for name in (quick, stuck):
            wait_until(lambda name=name: marker.exists(f"{name}:started"), name, worker)
        assert worker.stop() == 0
        assert quick_result.get(timeout=30) == "slept"
        assert cleanups(worker_env, stuck) == [("cleanup ran",)]
    finally:
        marker.close()
        client.close()

    assert wait_for_no_connections(worker_env) == 0, "connections left open by the stopped worker"
    log = worker.log()
    assert worker.forbidden_lines() == [], log
    assert_every_resource_closed_cleanly(log)
    assert "loopsafe.celery_worker_shutdown" in log


def test_killed_worker_redelivers_and_cold_shutdown_cancels(
    worker_env: WorkerEnv, start_worker: Any
) -> None:
    args = ["-P", "threads", "-c", "4"]
    key = f"{worker_env.queue}:started"
    first = start_worker(worker_env, args, PROCESS_LOOP)
    client = worker_env.client()
    marker = redis.Redis.from_url(worker_env.redis_url)
    try:
        # acks_late: the message of a task running when its worker is SIGKILLed comes back.
        result = send(worker_env, client, "slow_the_first_time", key)
        wait_until(lambda: marker.exists(key), "first delivery started", first)
        first.kill()
        second = start_worker(
            worker_env, args, {**PROCESS_LOOP, "LOOPSAFE_CELERY_VISIBILITY_TIMEOUT": "1"}
        )
        outcome = result.get(timeout=90)
        assert outcome["redelivered"] is True

        # Cold shutdown (SIGQUIT) cancels the coroutines in flight; their cleanup still runs.
        cold = f"cold-{uuid.uuid4().hex[:8]}"
        send(worker_env, client, "sleep_with_cleanup", cold, 120)
        wait_until(lambda: marker.exists(f"{cold}:started"), "cold target started", second)
        assert second.process is not None
        second.process.send_signal(signal.SIGQUIT)
        try:
            second.process.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cold shutdown did not end the worker:\n{second.log()}")
        assert cleanups(worker_env, cold) == [("cleanup ran",)]
    finally:
        marker.delete(key)
        marker.close()
        client.close()
    assert wait_for_no_connections(worker_env) == 0
    assert second.forbidden_lines() == [], second.log()


def test_a_concurrency_the_budget_cannot_serve_stops_the_worker_at_start(
    worker_env: WorkerEnv, tmp_path: Any
) -> None:
    # The budget was sized for one loop per process: eight per-thread loops would overrun it.
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        process = subprocess.run(
            Worker(worker_env, log, []).command(["-P", "threads", "-c", "8"]),
            env=worker_env.variables(
                {"LOOPSAFE_CELERY_BUDGET_PROCESSES": "1", "LOOPSAFE_CELERY_LOOP": "thread"}
            ),
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
    text = log.read_text()
    assert process.returncode != 0
    assert "WorkerBudgetError" in text, text
    assert "loop='process'" in text
    assert " ready." not in text  # it never took a task
