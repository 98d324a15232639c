"""Real Celery workers (prefork, threads, solo; Redis and RabbitMQ brokers) running async tasks.

The worker app (`worker_app.py`) touches the database at import time in the main process, before
the pool forks. Every task does a database query and a Redis publish through loopsafe.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from ..test_log_events import documented_events
from .conftest import AMQP_URL, WorkerEnv, amqp_reachable, postgres

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

TASK = "tests.celery.worker_app.{}"
TASKS = 60

POOLS = {
    # Recycling children every 3 tasks forks ~20 processes from a parent holding a live pool.
    "prefork": ["-P", "prefork", "-c", "2", "--max-tasks-per-child", "3"],
    "threads": ["-P", "threads", "-c", "4"],  # the default: one shared loop
    "threads, loop=thread": ["-P", "threads", "-c", "4"],
    "solo": ["-P", "solo"],
}
ENVIRONMENTS = {"threads, loop=thread": {"LOOPSAFE_CELERY_LOOP": "thread"}}


def connections_of(env: WorkerEnv) -> int:
    rows = postgres(
        env.postgres_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        env.application_name,
    )
    return int(rows[0][0])


def wait_for_no_connections(env: WorkerEnv, within: float = 15.0) -> int:
    """Connections the stopped worker left on the server (backends exit asynchronously)."""
    deadline = time.monotonic() + within
    left = connections_of(env)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = connections_of(env)
    return left


def lifecycle_events(log: str) -> Counter[str]:
    """How often loopsafe logged each resource lifecycle event (all processes of the worker)."""
    return Counter(
        re.findall(r"\b(loopsafe\.instance_(?:created|closed|dropped|abandoned))\b", log)
    )


def assert_every_resource_closed_cleanly(log: str) -> None:
    """Each instance a process created was closed inside its own loop (dropped ones are a
    child's inherited copies of the parent's, which the parent closes itself)."""
    events = lifecycle_events(log)
    assert events["loopsafe.instance_created"] > 0, "the worker logged no lifecycle events"
    assert events["loopsafe.instance_closed"] == events["loopsafe.instance_created"], events
    assert events["loopsafe.instance_abandoned"] == 0, events


def run_workload(env: WorkerEnv, client: Any) -> list[dict[str, Any]]:
    pending = [
        client.send_task(TASK.format("query_and_publish"), args=[n], queue=env.queue)
        for n in range(TASKS)
    ]
    return [result.get(timeout=90) for result in pending]


def check_workload(results: list[dict[str, Any]]) -> None:
    assert [r["n"] for r in results] == list(range(TASKS))
    assert all(r["double"] == 2 * r["n"] for r in results)
    assert all(r["ok"] is True for r in results), "a publish failed"


@pytest.mark.parametrize("pool", list(POOLS))
def test_async_tasks_on_a_real_worker(pool: str, worker_env: WorkerEnv, start_worker: Any) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    worker = start_worker(worker_env, POOLS[pool], ENVIRONMENTS.get(pool, {}))
    client = worker_env.client()
    try:
        marker = f"soft-{uuid.uuid4().hex[:8]}"
        soft = client.send_task(
            TASK.format("sleep_past_soft_limit"), args=[marker], queue=worker_env.queue
        )
        results = run_workload(worker_env, client)
        check_workload(results)

        # The soft time limit (prefork: Celery's signal; threads/solo: run_async's budget) fails
        # the task after its cleanup wrote a row, and the worker goes on serving.
        with pytest.raises(SoftTimeLimitExceeded):
            soft.get(timeout=60)
        assert soft.state == "FAILURE"
        rows = postgres(
            worker_env.postgres_url,
            f"SELECT note FROM {worker_env.table} WHERE marker = %s",
            marker,
        )
        assert rows == [("cleanup ran",)]
        after = client.send_task(TASK.format("query_and_publish"), args=[7], queue=worker_env.queue)
        assert after.get(timeout=30)["double"] == 14

        # Celery's own machinery is untouched: bound tasks retry, autoretry_for works, and the
        # result backend keeps the exception type.
        key = f"{worker_env.queue}:attempts"
        retried = client.send_task(TASK.format("retry_twice"), args=[key], queue=worker_env.queue)
        outcome = retried.get(timeout=30)
        assert (outcome["retries"], outcome["attempts"], outcome["id"]) == (2, 3, retried.id)
        key = f"{worker_env.queue}:flaky"
        assert (
            client.send_task(TASK.format("flaky"), args=[key], queue=worker_env.queue).get(
                timeout=30
            )
            == 3
        )
        failed = client.send_task(TASK.format("missing_row"), args=[42], queue=worker_env.queue)
        with pytest.raises(LookupError, match="no row 42"):
            failed.get(timeout=30)

        pids = {r["pid"] for r in results}
        backends = {r["backend_pid"] for r in results}
        if pool == "prefork":
            assert worker.pid not in pids
            assert len(pids) >= TASKS // 3  # children really were recycled (and forked anew)
        else:
            assert pids == {worker.pid}
        if pool == "solo":
            # One thread, one persistent loop: the import-time pool is reused by every task.
            assert len(backends) <= 2
        assert connections_of(worker_env) > 0  # pools stay open between tasks
    finally:
        client.close()

    assert worker.stop() == 0
    assert wait_for_no_connections(worker_env) == 0, "connections left open by the stopped worker"
    log = worker.log()
    assert worker.forbidden_lines() == [], log
    assert_every_resource_closed_cleanly(log)
    # Every loopsafe event the worker's processes logged is in the logging guide.
    worker_events = set(re.findall(r"\] (loopsafe\.[a-z_.]+[a-z])(?: |$)", log, re.MULTILINE))
    assert "loopsafe.celery_worker_configured" in worker_events, log
    assert sorted(worker_events - set(documented_events())) == []
    shutdown = re.findall(r"loopsafe\.celery_worker_shutdown .*loops_closed=(\d+)", log)
    assert len(shutdown) == 1, log
    if pool == "threads, loop=thread":
        # Each pool thread's loop closed as its thread ended, before worker_shutdown: counted.
        assert int(shutdown[0]) >= 2, log
    if pool == "prefork":
        assert "loopsafe.celery_process_shutdown" in log  # each child closed its own loop


def test_task_killed_mid_run_is_redelivered_and_completes(
    worker_env: WorkerEnv, start_worker: Any
) -> None:
    import redis

    key = f"{worker_env.queue}:started"
    first = start_worker(worker_env, ["-P", "prefork", "-c", "1"])
    client = worker_env.client()
    marker = redis.Redis.from_url(worker_env.redis_url)
    try:
        result = client.send_task(
            TASK.format("slow_the_first_time"), args=[key], queue=worker_env.queue
        )
        deadline = time.monotonic() + 60
        while not marker.exists(key):
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.05)
        first.kill()  # SIGKILL, mid-task, parent and child together

        # acks_late kept the message unacknowledged; a new worker restores it once it is older
        # than its (here 1 s) visibility timeout.
        second = start_worker(
            worker_env, ["-P", "prefork", "-c", "1"], {"LOOPSAFE_CELERY_VISIBILITY_TIMEOUT": "1"}
        )
        outcome = result.get(timeout=90)
        assert outcome["redelivered"] is True
        assert outcome["pid"] != int(marker.get(key) or 0)
    finally:
        marker.delete(key)
        marker.close()
        client.close()
    assert second.stop() == 0
    assert second.forbidden_lines() == [], second.log()
    assert_every_resource_closed_cleanly(second.log())


@pytest.mark.skipif(not amqp_reachable(), reason=f"no RabbitMQ at {AMQP_URL}")
def test_prefork_worker_with_a_rabbitmq_broker(worker_env: WorkerEnv, start_worker: Any) -> None:
    worker_env.broker_url = AMQP_URL
    worker = start_worker(worker_env, ["-P", "prefork", "-c", "2"])
    client = worker_env.client()
    try:
        check_workload(run_workload(worker_env, client))
    finally:
        client.close()
    assert worker.stop() == 0
    assert wait_for_no_connections(worker_env) == 0
    assert worker.forbidden_lines() == [], worker.log()
    assert_every_resource_closed_cleanly(worker.log())
    admin = worker_env.client()
    try:
        with admin.connection_for_write() as connection:
            connection.default_channel.queue_delete(worker_env.queue)
    finally:
        admin.close()
