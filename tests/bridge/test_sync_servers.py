"""Recipes, run for real: Flask, Django and gunicorn serving sync views that call run_async.

Each recipe starts a real server process (with a deadline) against real PostgreSQL and Redis,
sends concurrent requests, and checks: no request failed; the server's connections stayed within
one pool (process loop) or the configured budget (per-thread loops); once idle, every loop —
import-time ones included, a ``--preload`` master's too — was closed and no connection is left;
after SIGTERM the process exits and leaves 0 connections and 0 Redis clients; its log shows none
of the failures loopsafe prevents.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from loopsafe.testing import free_port

from .servers import (
    APPS,
    FORBIDDEN_IN_LOG,
    ROOT,
    Watcher,
    new_name,
    recipe_env,
    serve,
    server_command,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

#: One pool: SQLAlchemy's default QueuePool holds 5 connections and 5 + 10 at most.
ONE_POOL = 15
REQUESTS = 40
CONCURRENCY = 10


@dataclass(frozen=True)
class Recipe:
    server: str
    env: tuple[tuple[str, str], ...]
    #: Most PostgreSQL connections (and Redis clients) the server may hold at once.
    bound: int
    graceful: bool = True  # the server runs atexit on SIGTERM (the dev servers do not)

    @property
    def per_thread_loops_only(self) -> bool:
        """No shared process loop: not chosen, and no loop cap sending threads beyond it there.

        The shared loop keeps its pool while the process lives (it is the process's one pool);
        per-thread loops close once idle.
        """
        names = {key for key, _ in self.env}
        return not names & {"LOOPSAFE_RUN_ASYNC_LOOP", "LOOPSAFE_LOOPS_PER_PROCESS"}


RECIPES = {
    # Thread-per-request dev servers: one shared loop per process.
    "flask-dev-server": Recipe(
        "flask", (("LOOPSAFE_RUN_ASYNC_LOOP", "process"),), ONE_POOL, graceful=False
    ),
    "django-runserver": Recipe(
        "django", (("LOOPSAFE_RUN_ASYNC_LOOP", "process"),), ONE_POOL, graceful=False
    ),
    # gunicorn sync workers: one request thread per process, per-thread loop (the default).
    "gunicorn-sync": Recipe("gunicorn-sync", (), 2 * ONE_POOL),
    "gunicorn-sync-preload-max-requests": Recipe("gunicorn-sync-preload", (), 2 * ONE_POOL),
    # gunicorn gthread 2 x 8, per-thread loops within a budget of 24 connections in all.
    "gunicorn-gthread-budget": Recipe(
        "gunicorn-gthread",
        (
            ("DATABASE_MAX_CONNECTIONS", "24"),
            ("LOOPSAFE_PROCESSES", "2"),
            ("LOOPSAFE_LOOPS_PER_PROCESS", "8"),
            ("LOOPSAFE_DB_RESERVE", "0"),
        ),
        24,
    ),
    "gunicorn-django-process-loop": Recipe(
        "gunicorn-django", (("LOOPSAFE_RUN_ASYNC_LOOP", "process"),), 2 * ONE_POOL
    ),
}


@pytest.mark.parametrize("recipe_name", list(RECIPES))
def test_recipe_serves_within_its_bound_and_leaves_nothing(
    recipe_name: str, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    recipe = RECIPES[recipe_name]
    name = new_name()
    # Idle loops close after 1 s here (60 s by default), so the test can see it happen.
    env = recipe_env(
        postgres_url, redis_url, name, {"LOOPSAFE_RUN_ASYNC_IDLE_CLOSE": "1", **dict(recipe.env)}
    )
    watcher = Watcher(postgres_url, redis_url, name)
    port = free_port()
    log = tmp_path / "server.log"
    try:
        with serve(server_command(recipe.server, port), env, port, log) as server:
            with watcher.watching() as peak:
                failed = server.load(REQUESTS, CONCURRENCY)
            assert failed == 0, server.failures[:3]
            assert 1 <= peak.postgres <= recipe.bound, peak
            assert peak.redis <= recipe.bound, peak
            if recipe.per_thread_loops_only:
                # Idle: every per-thread loop closes, import-time and master loops included.
                assert watcher.wait_for(0, 0, within=20) == (0, 0), server.log_text()[-3000:]
            # Busy again, then SIGTERM while the pools hold their connections.
            assert server.load(10, 5) == 0, server.failures[:3]
            code = server.stop()
            assert watcher.wait_for(0, 0, within=10) == (0, 0)
            text = server.log_text()
    finally:
        watcher.close()
    if recipe.graceful:
        assert code == 0, text[-3000:]
        assert "loopsafe.run_async_loop_closed" in text
    for forbidden in FORBIDDEN_IN_LOG:
        assert forbidden not in text, f"{forbidden!r} in the log:\n{text[-3000:]}"


@pytest.mark.parametrize("config", [False, True], ids=["gunicorn-alone", "recipe-config"])
def test_gunicorn_sync_workers_leave_their_listeners_unclosed(config: bool, tmp_path: Path) -> None:
    """gunicorn's leak, not loopsafe's: serving an app without loopsafe under dev mode, each sync
    worker (2 here; not the master) prints its unclosed listener at exit. The recipes' config
    ignores exactly that warning: a socket the app leaks still shows. When a gunicorn release
    closes them this fails: drop ``tests/bridge/apps/gunicorn_conf.py`` then."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2"]
    if config:
        command += ["-c", f"python:{APPS}.gunicorn_conf"]
    env = {
        **os.environ,
        "PYTHONDEVMODE": "1",
        "PYTHONWARNINGS": "error::ResourceWarning",
        "PYTHONPATH": str(ROOT),
        "LOOPSAFE_APP_NAME": new_name(),
    }
    with serve([*command, f"{APPS}.plain_wsgi:app"], env, port, tmp_path / "server.log") as server:
        assert server.get() == "ok"
        if config:
            assert server.get("/leak") == "ok"
        assert server.stop() == 0
        text = server.log_text()
    assert "loopsafe" not in text
    listener = rf"<socket\.socket fd=\d+, [^>]*laddr=\('127\.0\.0\.1', {port}\)>"
    unclosed = re.findall(r"^ResourceWarning: unclosed (<.*>)$", text, re.MULTILINE)
    if config:
        assert len(unclosed) == 1, text  # the app's socket, whichever worker served /leak
        assert not re.fullmatch(listener, unclosed[0]), text
    else:
        assert len(unclosed) == 2, text
        assert all(re.fullmatch(listener, found) for found in unclosed), text


@pytest.mark.parametrize(
    ("mode", "calls", "concurrent"),
    [("thread", 100, 10), ("process", 100, 10), ("thread", 300, 20)],
    ids=["thread-10", "process-10", "thread-20"],
)
def test_plain_script_thread_per_call_holds_one_pool_and_leaves_no_connection(
    mode: str, calls: int, concurrent: int, postgres_url: str, redis_url: str
) -> None:
    """A script starting a thread per call, with no budget: no failure, no pile-up of loops.
    With more threads than one pool has connections (20 at a time), the process still holds one
    pool's worth at most (15: the per-thread loops share SQLAlchemy's 5 + 10) and as many Redis
    connections (loopsafe.redis's limit for per-thread loops); the threads beyond wait instead of
    failing (21 connections before). Every loop is closed at exit."""
    name = new_name()
    env = recipe_env(postgres_url, redis_url, name, {"LOOPSAFE_RUN_ASYNC_LOOP": mode})
    watcher = Watcher(postgres_url, redis_url, name)
    try:
        with watcher.watching() as peak:
            result = subprocess.run(
                [sys.executable, "-m", "tests.bridge.apps.script", str(calls), str(concurrent)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=150,
            )
        assert 1 <= peak.postgres <= ONE_POOL, peak
        assert 1 <= peak.redis <= ONE_POOL, peak
        assert watcher.wait_for(0, 0, within=10) == (0, 0)
    finally:
        watcher.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failures=0" in result.stdout
    for forbidden in FORBIDDEN_IN_LOG:
        assert forbidden not in result.stderr, result.stderr[-3000:]
