"""Real sync web servers (Flask's, Django's, gunicorn) serving the recipe apps, with deadlines.

Used by the recipe tests and by ``benchmarks/bench_sync_servers.py``: start a server process,
send it concurrent requests, watch the PostgreSQL connections and Redis clients it holds (by
application_name / client name), stop it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import redis

from loopsafe.testing import free_port
from tests.loop_failures import LOOP_FAILURES

ROOT = Path(__file__).resolve().parents[2]
APPS = "tests.bridge.apps"
#: Never in a recipe server's log: the failures loopsafe exists to prevent, and no traceback.
FORBIDDEN_IN_LOG = (*LOOP_FAILURES, "Traceback")


def server_command(recipe: str, port: int) -> list[str]:
    """The command line of a recipe: ``flask``, ``django``, ``gunicorn-…`` (see RECIPES)."""
    python = sys.executable
    bind = f"127.0.0.1:{port}"
    flask_app = f"{APPS}.flask_app:app"
    # The config ignores the one ResourceWarning gunicorn's sync workers cause (see the module).
    gunicorn = [
        *(python, "-m", "gunicorn", "-c", f"python:{APPS}.gunicorn_conf"),
        *("-b", bind, "--graceful-timeout", "10"),
    ]
    commands = {
        "flask": [
            python,
            "-m",
            "flask",
            "--app",
            flask_app,
            "run",
            "--with-threads",
            "--port",
            str(port),
        ],
        "django": [python, "-m", "django", "runserver", "--noreload", bind],
        "gunicorn-sync": [*gunicorn, "-w", "2", flask_app],
        "gunicorn-sync-preload": [
            *gunicorn,
            "-w",
            "2",
            "--preload",
            "--max-requests",
            "15",
            flask_app,
        ],
        "gunicorn-gthread": [*gunicorn, "-w", "2", "-k", "gthread", "--threads", "8", flask_app],
        "gunicorn-django": [
            *gunicorn,
            "-w",
            "2",
            "-k",
            "gthread",
            "--threads",
            "4",
            "--preload",
            f"{APPS}.django_wsgi:application",
        ],
    }
    return commands[recipe]


@dataclass
class Counts:
    """Peak PostgreSQL connections and Redis clients seen while watching."""

    postgres: int = 0
    redis: int = 0


class Watcher:
    """Counts an app's server connections by name, now and (on a thread) at their peak."""

    def __init__(self, postgres_url: str, redis_url: str, name: str) -> None:
        self.postgres_url = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
        self.redis = redis.Redis.from_url(redis_url)
        self.name = name
        self.peak = Counts()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def postgres_now(self) -> int:
        async def count() -> int:
            connection = await asyncpg.connect(self.postgres_url)
            try:
                value = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", self.name
                )
                return int(value)
            finally:
                await connection.close()

        return asyncio.run(count())

    def redis_now(self) -> int:
        return sum(1 for client in self.redis.client_list() if client.get("name") == self.name)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak.postgres = max(self.peak.postgres, self.postgres_now())
            self.peak.redis = max(self.peak.redis, self.redis_now())

    @contextmanager
    def watching(self) -> Iterator[Counts]:
        self.peak = Counts()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="recipe-watcher", daemon=True)
        self._thread.start()
        try:
            yield self.peak
        finally:
            self._stop.set()
            self._thread.join(10)

    def wait_for(self, postgres: int, redis_clients: int, within: float) -> tuple[int, int]:
        """Poll until the counts are at most these; the last counts seen."""
        deadline = time.monotonic() + within
        while True:
            now = self.postgres_now(), self.redis_now()
            if (now[0] <= postgres and now[1] <= redis_clients) or time.monotonic() > deadline:
                return now
            time.sleep(0.05)

    def close(self) -> None:
        self.redis.close()


@dataclass
class Server:
    """One running recipe server process and its log."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    name: str
    failures: list[str] = field(default_factory=list)

    def get(self, path: str = "/") -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as reply:
            return str(reply.read().decode())

    def load(self, requests: int, concurrency: int) -> int:
        """Send `requests` GETs, `concurrency` at a time; how many failed."""

        def one(_: int) -> bool:
            try:
                return self.get().startswith("ok")
            except Exception as exc:
                self.failures.append(repr(exc))
                return False

        with ThreadPoolExecutor(concurrency) as pool:
            return sum(1 for ok in pool.map(one, range(requests)) if not ok)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, deadline: float = 30.0) -> int:
        """SIGTERM, wait up to `deadline` seconds (then SIGKILL and raise); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(deadline)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"server did not stop within {deadline} s of SIGTERM") from None


def recipe_env(
    postgres_url: str, redis_url: str, name: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOOPSAFE_", "DATABASE_", "DJANGO_"))
    }
    env.update(
        DATABASE_URL=postgres_url,
        REDIS_URL=redis_url,
        LOOPSAFE_APP_NAME=name,
        LOOPSAFE_APP_LOG="1",
        DJANGO_SETTINGS_MODULE=f"{APPS}.django_app",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@contextmanager
def serve(
    command: Sequence[str], env: Mapping[str, str], port: int, log: Path, start_within: float = 60.0
) -> Iterator[Server]:
    """Start `command`, wait until `port` answers; on exit, SIGKILL whatever is left."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, port, log, env["LOOPSAFE_APP_NAME"])
    try:
        deadline = time.monotonic() + start_within
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"server exited with {process.returncode}:\n{server.log_text()}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"server not up within {start_within} s:\n{server.log_text()}"
                    ) from None
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        else:
            # gunicorn's workers die with their master; anything else left in the group goes too.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def new_name() -> str:
    return f"loopsafe-recipe-{uuid.uuid4().hex[:8]}"


__all__ = (
    "FORBIDDEN_IN_LOG",
    "Counts",
    "Server",
    "Watcher",
    "free_port",
    "new_name",
    "recipe_env",
    "serve",
    "server_command",
)
