"""`python -m roadmap_app`: the demo end to end, and the CLI's errors."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from roadmap_testkit import FULL_TIER, SLOW_TIER_REASON, delete_keys, make_env, query

from roadmap_app.migrations import SCHEMA_VERSION
from roadmap_app.processes import free_port, port_is_free

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roadmap_app", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.celery
@pytest.mark.slow
# The same processes finish roadmaps in the quick tier (the `stack` tests); the demo's own
# command line and output are the slow tier's.
@pytest.mark.skipif(not FULL_TIER, reason=SLOW_TIER_REASON)
def test_demo_runs_the_whole_system_to_a_completed_roadmap_and_shuts_down(
    database_url: str, redis_url: str
) -> None:
    port = free_port()
    prefix = f"demo{uuid.uuid4().hex[:6]}:"
    env = make_env(database_url, redis_url, prefix, LLM_LATENCY_MS="20")
    try:
        result = _run("demo", "--goal", "Learn Elm", "--port", str(port), env=env, timeout=110)
    finally:
        delete_keys(redis_url, prefix)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"schema      version {SCHEMA_VERSION} (up to date)" in out
    assert "workers     workflow ×1, content ×2, logs ×1 (Celery prefork)" in out
    assert "status → completed" in out
    assert "100%" in out
    assert "✓ Elm roadmap — completed in" in out
    # No invitation to open a URL whose server stops right after (issue 22).
    assert "Open http" not in out
    assert f"The servers stop now, and http://127.0.0.1:{port} with them." in out
    assert "run the demo with --serve" in out
    assert "shutting down 4 processes" in out
    assert out.rstrip().endswith("done")
    roadmap_id = out.split("/?roadmap=")[1].split()[0]
    (row,) = query(database_url, "SELECT status FROM roadmaps WHERE id = %(i)s", {"i": roadmap_id})
    assert row == ("completed",)
    # Everything it started is gone: the port is free again.
    assert port_is_free(port)


def test_missing_command_prints_usage() -> None:
    result = _run(env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "usage: python -m roadmap_app" in result.stderr
    assert "the following arguments are required: COMMAND" in result.stderr


def test_bad_settings_stop_the_worker_with_a_clear_message() -> None:
    result = _run("worker", env={"PATH": "/usr/bin:/bin", "LLM_FAILURE_RATE": "sometimes"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: LLM_FAILURE_RATE must be a number between 0 and 1, got 'sometimes'"
    )


@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_an_unreachable_database_is_one_line_naming_it_and_the_variable(command: str) -> None:
    port = free_port()  # nothing listens there
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"postgresql://postgres:s3cret@127.0.0.1:{port}/roadmap",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    result = _run(command, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach PostgreSQL at postgresql://postgres:***@127.0.0.1:{port}/roadmap "
        f"([Errno 111] Connect call failed ('127.0.0.1', {port})); start it, or set DATABASE_URL "
        "to a running server"
    ]
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_an_old_variable_stops_the_api_with_the_name_to_use() -> None:
    result = _run("api", env={"PATH": "/usr/bin:/bin", "UVICORN_WORKERS": "4"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: UVICORN_WORKERS is not read any more: set WEB_CONCURRENCY "
        "(API processes started by `serve`)"
    )
