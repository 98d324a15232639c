"""Fixtures for loopsafe.celery tests: clean run_async loops, and real Celery worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery

# Autouse here too: every Celery test starts and ends without run_async loops.
from tests.bridge.conftest import _fresh_run_async_loops  # noqa: F401
from tests.loop_failures import LOOP_FAILURES

ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "tests.celery.worker_app"
AMQP_URL = os.environ.get("LOOPSAFE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: What a worker's log must never contain (tracebacks of tasks that fail on purpose may be there).
FORBIDDEN_IN_LOG = LOOP_FAILURES


@dataclass
class WorkerEnv:
    """One test run's isolated names: queue, table, database application_name, broker URL."""

    broker_url: str
    backend_url: str
    redis_url: str
    postgres_url: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def queue(self) -> str:
        return f"loopsafe-celery-{self.run_id}"

    @property
    def table(self) -> str:
        return f"loopsafe_celery_{self.run_id}"

    @property
    def database_name(self) -> str:
        return f"celery-{self.run_id}"

    @property
    def application_name(self) -> str:
        return f"loopsafe:{self.database_name}"

    def variables(self, extra: Mapping[str, str] = {}) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LOOPSAFE_CELERY_BROKER=self.broker_url,
            LOOPSAFE_CELERY_BACKEND=self.backend_url,
            LOOPSAFE_CELERY_QUEUE=self.queue,
            LOOPSAFE_CELERY_DATABASE_URL=self.postgres_url,
            LOOPSAFE_CELERY_DATABASE_NAME=self.database_name,
            LOOPSAFE_CELERY_REDIS_URL=self.redis_url,
            LOOPSAFE_CELERY_TABLE=self.table,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            # Print what Python hides by default: a socket or transport left unclosed.
            PYTHONWARNINGS="default::ResourceWarning",
        )
        env.update(extra)
        return env

    def client(self) -> Any:
        """A Celery app for sending tasks and reading results (the tasks run in the worker)."""
        client = _ResultKeepingCelery(
            "loopsafe_test_client", broker=self.broker_url, backend=self.backend_url
        )
        options: dict[str, Any] = {}
        if self.broker_url.startswith("redis"):
            options["global_keyprefix"] = f"{self.queue}:"
        client.conf.update(
            task_default_queue=self.queue,
            broker_transport_options=options,
            result_accept_content=["json"],
            task_serializer="json",
        )
        return client


class _ResultKeepingCelery(Celery):  # type: ignore[misc]
    """A client app that keeps every result it sent until the client itself goes.

    Before Celery 5.7 (our floor is 5.3) a garbage collection that lands inside ``send_task``'s
    pub/sub SUBSCRIBE can finalise an older ``AsyncResult``, whose ``__del__`` re-enters the same
    non-reentrant pub/sub lock and hangs the test process (celery/celery#10477). A result kept
    alive is never finalised mid-send. They go before the client closes: finalised after, they
    would reopen the pub/sub connection to unsubscribe, and leave that socket unclosed.
    """

    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        result = super().send_task(*args, **kwargs)
        self.__dict__.setdefault("sent_results", []).append(result)
        return result

    def close(self) -> None:
        self.__dict__.pop("sent_results", None)
        super().close()


class Worker:
    """A real ``celery worker`` subprocess with its output in a log file."""

    def __init__(
        self, env: WorkerEnv, log_path: Path, args: list[str], extra: Mapping[str, str] = {}
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.extra = dict(extra)
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, args: list[str]) -> list[str]:
        """The ``celery worker`` command line for this worker's app, queue and `args`."""
        name = f"{uuid.uuid4().hex[:8]}@loopsafe-tests"
        return [
            sys.executable, "-m", "celery", "-A", WORKER_APP, "worker",
            "-Q", self.env.queue, "-n", name, "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            *args,
        ]  # fmt: skip

    def start(self, within: float = 60.0) -> Worker:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(self.args),
                cwd=ROOT,
                env=self.env.variables(self.extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes the children too
            )
        deadline = time.monotonic() + within
        while " ready." not in self.log():
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"worker not ready within {within} s:\n{self.log()}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, within: float = 60.0) -> int:
        """Warm shutdown (SIGTERM), as a deployment stops a worker; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker did not stop within {within} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, like the OOM killer or a lost node."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def forbidden_lines(self) -> list[str]:
        return [
            line
            for line in self.log().splitlines()
            if any(needle.lower() in line.lower() for needle in FORBIDDEN_IN_LOG)
        ]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    """Start workers for a test; any still running at the end are killed."""
    workers: list[Worker] = []

    def start(env: WorkerEnv, args: list[str], extra: Mapping[str, str] = {}) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(workers)}.log", args, extra)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()


def postgres(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh connection of the test process (never loopsafe's pools)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


@pytest.fixture
def worker_env(postgres_url: str, redis_url: str) -> Iterator[WorkerEnv]:
    env = WorkerEnv(
        broker_url=redis_url, backend_url=redis_url, redis_url=redis_url, postgres_url=postgres_url
    )
    postgres(
        postgres_url,
        f"CREATE TABLE {env.table} (id serial PRIMARY KEY, marker text NOT NULL, note text)",
    )
    yield env
    postgres(postgres_url, f"DROP TABLE IF EXISTS {env.table}")


def amqp_reachable(url: str = AMQP_URL) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1):
            return True
    except OSError:
        return False
