"""The production layout: process counts and knobs from the environment, the plan, the commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from roadmap_testkit import (
    FULL_TIER,
    SLOW_TIER_REASON,
    delete_keys,
    make_env,
    wait_for,
    wait_for_status,
)

from loopsafe.db import BudgetPlan
from roadmap_app.config import Settings, SettingsError
from roadmap_app.layout import Layout, process_env
from roadmap_app.processes import ManagedProcess, free_port, wait_for_http


def test_layout_reads_every_knob_and_builds_worker_commands() -> None:
    layout = Layout.from_env(
        {
            "WEB_CONCURRENCY": "4",
            "CELERY_CONTENT_CONCURRENCY": "6",
            "CELERY_CONTENT_TIME_LIMIT_S": "120",
            "CELERY_MAX_TASKS_PER_CHILD": "50",
            "PORT": "9001",
        }
    )
    assert layout.web_workers == 4
    content = next(w for w in layout.workers if w.queue == "content")
    assert (content.concurrency, content.time_limit_s) == (6, 120.0)
    commands = dict(layout.commands())
    assert commands["web"][-6:] == ["--host", "127.0.0.1", "--port", "9001", "--workers", "4"]
    assert commands["content"][-10:] == [
        "--concurrency", "6", "--name", "content@%h", "--soft-time-limit", "120",
        "--time-limit", "150", "--max-tasks-per-child", "50",
    ]  # fmt: skip
    assert set(commands) == {"web", "workflow", "content", "logs"}
    # One beat per layout, on the worker of the sweeper's queue.
    assert [role for role, argv in commands.items() if "--beat" in argv] == ["workflow"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY must be between 1 and 64"),
        ({"CELERY_LOGS_CONCURRENCY": "many"}, "CELERY_LOGS_CONCURRENCY must be a whole number"),
        ({"CELERY_CONTENT_TIME_LIMIT_S": "0"}, "CELERY_CONTENT_TIME_LIMIT_S must be between"),
        ({"DATABASE_WEB_WEIGHT": "-1"}, "DATABASE_WEB_WEIGHT must be between"),
        ({"PORT": "70000"}, "PORT must be between 1 and 65535"),
        ({"CELERY_POOL": "gevent"}, "CELERY_POOL must be 'prefork' or 'threads', got 'gevent'"),
    ],
)
def test_bad_layout_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Layout.from_env(env)


def test_the_plan_protects_the_api_and_fits_the_limit() -> None:
    layout = Layout.from_env(
        {"WEB_CONCURRENCY": "2", "CELERY_CONTENT_CONCURRENCY": "6", "DATABASE_WEB_WEIGHT": "4"}
    )
    settings = Settings.from_env({"DATABASE_MAX_CONNECTIONS": "50"})
    env = process_env(settings, layout, {"PATH": "/bin"})
    plan = BudgetPlan.from_mapping(json.loads(env["LOOPSAFE_BUDGET_PLAN"]))
    assert plan == layout.plan(settings)
    assert plan.budget_for("web").per_process > plan.budget_for("content").per_process
    assert plan.total <= 45
    # Fixed pools (DATABASE_POOL_SIZE) or a plan given by the operator are left alone.
    fixed = Settings.from_env({"DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "2"})
    assert "LOOPSAFE_BUDGET_PLAN" not in process_env(fixed, layout, {})


@pytest.mark.parametrize(
    ("worker_loop", "loops", "content_share"),
    [("process", 1, 9), ("thread", 6, 6)],
    ids=["shared-loop", "thread-loops"],
)
def test_a_threads_pool_is_planned_as_one_process_per_queue(
    worker_loop: str, loops: int, content_share: int
) -> None:
    """CELERY_POOL=threads: each queue is one process; with the shared loop it opens one pool,
    with a loop per thread one per thread, and either way it weighs its concurrency."""
    env = {
        "CELERY_POOL": "threads",
        "CELERY_WORKER_LOOP": worker_loop,
        "WEB_CONCURRENCY": "4",
        "CELERY_CONTENT_CONCURRENCY": "6",
        "CELERY_WORKFLOW_CONCURRENCY": "4",
        "CELERY_LOGS_CONCURRENCY": "4",
        "DATABASE_MAX_CONNECTIONS": "50",
    }
    layout = Layout.from_env(env)
    assert layout.pool == "threads"
    assert dict(layout.commands())["content"][6:10] == ["--pool", "threads", "--concurrency", "6"]
    plan = layout.plan(Settings.from_env(env))
    content = plan.budget_for("content")
    assert (content.processes, content.loops_per_process) == (1, loops)
    assert plan.roles["content"].weight == 6
    # The API keeps its priority; one process holds at least what six prefork children would
    # (one shared loop holds 9: 45 × 6/30 rounds down once, not six times 1.5).
    prefork = Layout.from_env({**env, "CELERY_POOL": "prefork"}).plan(Settings.from_env(env))
    assert plan.budget_for("web").per_process == prefork.budget_for("web").per_process == 6
    assert content.per_process == content_share >= 6 * prefork.budget_for("content").per_process
    assert plan.total <= plan.usable == 45
    assert Layout.from_env({}).pool == "prefork"
    assert dict(Layout.from_env({}).commands())["logs"][6:8] == ["--pool", "prefork"]


def test_a_layout_too_big_for_the_limit_is_refused() -> None:
    layout = Layout.from_env({"CELERY_CONTENT_CONCURRENCY": "40"})
    with pytest.raises(SettingsError, match=r"DATABASE_MAX_CONNECTIONS: .*What would fit"):
        layout.plan(Settings.from_env({"DATABASE_MAX_CONNECTIONS": "20"}))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.celery
@pytest.mark.slow
@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_serve_runs_the_whole_layout_with_role_budgets_and_stops_cleanly(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    prefix = f"rmserve{uuid.uuid4().hex[:8]}:"
    env = make_env(
        database_url, redis_url, prefix, PORT=str(port), WEB_CONCURRENCY="1",
        CELERY_WORKFLOW_CONCURRENCY="1", CELERY_CONTENT_CONCURRENCY="1",
        CELERY_LOGS_CONCURRENCY="1", DATABASE_MAX_CONNECTIONS="20",
    )  # fmt: skip
    serve = ManagedProcess(
        "serve", [sys.executable, "-m", "roadmap_app", "serve"], env=env, log_path=tmp_path / "log"
    ).start()
    try:
        health = wait_for_http(f"http://127.0.0.1:{port}/health", timeout=90, process=serve).json()
        # 18 usable: web weight 4 of 7 units → 10 connections for the one API process.
        assert health["database"]["budget"]["role"] == "web"
        assert health["database"]["budget"]["per_process"] == 10
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            created = client.post("/api/v1/roadmaps", json={"goal": "Learn SQL"}).json()
            wait_for_status(client, created["task_id"], "completed", timeout=90)
        # Beat runs the sweeper (every SWEEP_INTERVAL_S = 1 s here) and a worker runs it.
        serve.wait_for_log("Sending due task sweep-abandoned", timeout=30)
        wait_for(
            lambda: re.search(r"Task roadmap\.sweep_abandoned\[[^\]]+\] succeeded", serve.log_text()),
            timeout=30,
            what="a sweep to run",
        )
    finally:
        assert serve.stop(timeout=30) == 0, serve.tail()
        delete_keys(redis_url, prefix)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.celery
@pytest.mark.slow
# The quick tier serves the whole layout (above) and loads the shared-loop worker app (below);
# running that layout through a roadmap is the slow tier's.
@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_serve_runs_shared_loop_workers_one_process_per_queue(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """CELERY_POOL=threads + CELERY_WORKER_LOOP=process: every worker is a single process (no
    prefork children) and a roadmap still goes all the way through."""
    port = free_port()
    prefix = f"rmshared{uuid.uuid4().hex[:8]}:"
    env = make_env(
        database_url, redis_url, prefix, PORT=str(port), WEB_CONCURRENCY="1",
        CELERY_WORKFLOW_CONCURRENCY="2", CELERY_CONTENT_CONCURRENCY="4",
        CELERY_LOGS_CONCURRENCY="2", DATABASE_MAX_CONNECTIONS="20", CELERY_POOL="threads",
        CELERY_WORKER_LOOP="process",
    )  # fmt: skip
    serve = ManagedProcess(
        "serve", [sys.executable, "-m", "roadmap_app", "serve"], env=env, log_path=tmp_path / "log"
    ).start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=90, process=serve)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            created = client.post("/api/v1/roadmaps", json={"goal": "Learn SQL"}).json()
            done = wait_for_status(client, created["task_id"], "completed", timeout=90)
        assert done["error"] is None
        workers = [
            p for p in psutil.Process(serve.pid).children() if "worker" in p.cmdline()
        ]
        assert len(workers) == 3
        assert all("threads" in p.cmdline() for p in workers)
        # No pool children: the only child allowed is the workflow worker's embedded beat.
        assert {len(p.children()) for p in workers if "--beat" not in p.cmdline()} == {0}
        assert [len(p.children()) for p in workers if "--beat" in p.cmdline()] == [1]
    finally:
        assert serve.stop(timeout=30) == 0, serve.tail()
        delete_keys(redis_url, prefix)


def test_a_shared_loop_worker_app_loads(database_url: str, redis_url: str) -> None:
    env = make_env(database_url, redis_url, "rmloop:", CELERY_WORKER_LOOP="process")
    result = subprocess.run(
        [sys.executable, "-c", "import roadmap_app.worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_worker_loop_setting_is_validated() -> None:
    with pytest.raises(SettingsError, match="CELERY_WORKER_LOOP must be 'thread' or 'process'"):
        Settings.from_env({"CELERY_WORKER_LOOP": "fiber"})
