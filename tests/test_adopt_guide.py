"""The adoption guide, followed: its snippets are the whole app, run on real servers and workers.

docs/getting-started/adopt.md is the single source: every code block whose first line is a
file path comment (``# myapp/api.py``) is written to a fresh project, which then runs as the guide
says — tables created, a real uvicorn serving the API, a real prefork Celery worker running the
task, and the project's own pytest suite awaiting ``task.coroutine``. Blocks marked ``# before:``
or ``# excerpt:`` are illustrations and are not written.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopsafe.testing import EmbeddedRedis, free_port
from tests.conftest import slow_tier
from tests.loop_failures import LOOP_FAILURES

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.celery, pytest.mark.slow]

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "getting-started" / "adopt.md"
#: The files the guide must give, so that losing a snippet fails here and not in a reader's hands.
EXPECTED = {
    "pyproject.toml",
    "migrations/env.py",
    "myapp/models.py",
    "myapp/db.py",
    "myapp/worker.py",
    "myapp/api.py",
    "tests/conftest.py",
    "tests/test_notes.py",
}
#: What the app's processes must never log: the failures the guide's changes remove.
FORBIDDEN_IN_LOG = (*LOOP_FAILURES, "Traceback")
_BLOCK = re.compile(r"^```(?:python|toml)\n# (?P<path>[\w./]+\.(?:py|toml))\n(?P<body>.*?)^```$",
                    re.MULTILINE | re.DOTALL)  # fmt: skip


def guide_files(text: str) -> dict[str, str]:
    """{path: content} of the guide's file blocks, the path comment line left out."""
    files: dict[str, str] = {}
    for block in _BLOCK.finditer(text):
        assert block["path"] not in files, f"the guide gives {block['path']} twice"
        files[block["path"]] = block["body"]
    return files


def test_guide_gives_every_file_of_the_app_once() -> None:
    assert set(guide_files(GUIDE.read_text())) == EXPECTED


def test_illustrations_are_not_taken_for_files() -> None:
    text = "```python\n# before: myapp/db.py\nx = 1\n```\n```python\n# myapp/db.py\ny = 2\n```\n"
    assert guide_files(text) == {"myapp/db.py": "y = 2\n"}


def _psql(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(sql)


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """A database of the guide's own on the test server, dropped afterwards."""
    name = f"adopt_guide_{uuid.uuid4().hex[:10]}"
    _psql(postgres_url, f"CREATE DATABASE {name}")
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    _psql(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Child:
    """A child process of the app in its own process group, killed at its deadline."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # killpg takes a prefork worker's children too
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, ready: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not ready():
            if self.process.poll() is not None:
                pytest.fail(f"{what} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{what} not ready within {within} s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, within: float = 30.0) -> int:
        """SIGTERM (a warm shutdown, as a deployment stops it); SIGKILL at the deadline."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not stop within {within} s:\n{self.log()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


def _forbidden(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if any(needle.lower() in line.lower() for needle in FORBIDDEN_IN_LOG)
    ]


def _api_answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def write_project(project: Path, files: dict[str, str]) -> None:
    for path, content in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(content)


# The slow tier: the guide's files are checked in the quick tier (above); running its whole app
# (a project of its own, migrations, servers, workers) is CI's full tier.
@slow_tier
def test_the_guides_alembic_migration_creates_the_tables(tmp_path: Path, database_url: str) -> None:
    """`alembic init -t async`, the guide's env.py, then autogenerate and upgrade, as written."""
    project = tmp_path / "project"
    files = guide_files(GUIDE.read_text())
    env_py = files.pop("migrations/env.py")
    write_project(project, files)
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(project)}
    alembic = [sys.executable, "-m", "alembic"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*alembic, *args], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert not _forbidden(done.stderr), done.stderr
        return done.stdout + done.stderr

    run("init", "-t", "async", "migrations")
    (project / "migrations" / "env.py").write_text(env_py)
    run("revision", "--autogenerate", "-m", "notes")
    [revision] = (project / "migrations" / "versions").glob("*_notes.py")
    assert re.search(r"op\.create_table\(\s*[\"']notes[\"']", revision.read_text())
    run("upgrade", "head")
    import psycopg

    with psycopg.connect(database_url) as connection:
        columns = connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
        ).fetchall()
        version = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert sorted(name for (name,) in columns) == ["body", "id", "summary"]
    assert len(version) == 1


@slow_tier
def test_the_guides_app_runs_on_real_servers(tmp_path: Path, database_url: str) -> None:
    project = tmp_path / "project"
    write_project(project, guide_files(GUIDE.read_text()))
    children: list[Child] = []
    with EmbeddedRedis() as broker:  # the guide's broker, private to this test
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker.url,
            "PYTHONPATH": str(project),
            "PYTHONWARNINGS": "default::ResourceWarning",  # show an unclosed socket
        }
        try:
            # The guide's run steps: tables, a worker, the API.
            created = subprocess.run(
                [sys.executable, "-m", "myapp.db"],
                cwd=project, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            assert not _forbidden(created.stderr), created.stderr
            worker = Child(
                [
                    sys.executable, "-m", "celery", "-A", "myapp.worker", "worker",
                    "--pool", "prefork", "-c", "2", "-l", "INFO",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                ],
                project, env, tmp_path / "worker.log",
            )  # fmt: skip
            children.append(worker)
            port = free_port()
            api = Child(
                [sys.executable, "-m", "uvicorn", "myapp.api:app", "--port", str(port)],
                project, env, tmp_path / "api.log",
            )  # fmt: skip
            children.append(api)
            base_url = f"http://127.0.0.1:{port}"
            worker.wait_for(lambda: " ready." in worker.log(), 60, "the Celery worker")
            api.wait_for(lambda: _api_answers(base_url), 60, "uvicorn")

            # A request writes through session() and sends the task; the worker runs it.
            body = "a note written by the API, summarized by a prefork worker child"
            created_note = httpx.post(f"{base_url}/notes", params={"body": body}, timeout=10)
            assert created_note.status_code == 200, created_note.text
            note_url = f"{base_url}/notes/{created_note.json()['id']}"
            deadline = time.monotonic() + 30
            while (note := httpx.get(note_url, timeout=10).json())["summary"] is None:
                assert time.monotonic() < deadline, f"no summary within 30 s:\n{worker.log()}"
                time.sleep(0.1)
            assert note == {"body": body, "summary": body[:40]}
            assert "succeeded" in worker.log()

            # uvicorn ends by re-raising the SIGTERM it handled (after a complete shutdown).
            assert api.stop() in (0, -signal.SIGTERM), api.log()
            assert "Application shutdown complete" in api.log()
            assert worker.stop() == 0, worker.log()
            for child in children:
                assert not _forbidden(child.log()), child.log()
        finally:
            for child in children:
                child.kill()

        # The project's own tests, as its developers run them: the plugin serves this suite's
        # database (no second server), the task's coroutine is awaited on the test's loop.
        suite = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
            cwd=project,
            env={**env, "LOOPSAFE_TEST_DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert re.search(r"\b1 passed\b", suite.stdout), suite.stdout


def test_the_worker_mode_switch_reaches_a_real_worker(tmp_path: Path, database_url: str) -> None:
    """Step 7's command: LOOPSAFE_WORKER_LOOP=thread turns a threads worker to a loop per thread."""
    import psycopg
    from celery import Celery

    project = tmp_path / "project"
    write_project(project, guide_files(GUIDE.read_text()))
    with EmbeddedRedis() as broker:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker.url,
            "PYTHONPATH": str(project),
            "PYTHONWARNINGS": "default::ResourceWarning",
            "LOOPSAFE_WORKER_LOOP": "thread",
        }
        created = subprocess.run(
            [sys.executable, "-m", "myapp.db"],
            cwd=project, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        with psycopg.connect(database_url, autocommit=True) as connection:
            ids = [
                connection.execute(
                    "INSERT INTO notes (body) VALUES (%s) RETURNING id", (f"note {n} " * 10,)
                ).fetchone()[0]  # type: ignore[index]
                for n in range(6)
            ]
        worker = Child(
            [
                sys.executable, "-m", "celery", "-A", "myapp.worker", "worker",
                "--pool", "threads", "-c", "4", "-l", "INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            project, env, tmp_path / "worker.log",
        )  # fmt: skip
        client = Celery("adopt_guide_client", broker=broker.url, set_as_current=False)
        try:
            worker.wait_for(lambda: " ready." in worker.log(), 60, "the Celery worker")
            for note_id in ids:
                client.send_task("myapp.worker.summarize", args=(note_id,))
            deadline = time.monotonic() + 30
            with psycopg.connect(database_url, autocommit=True) as connection:
                while connection.execute(
                    "SELECT count(*) FROM notes WHERE summary IS NULL"
                ).fetchone() != (0,):
                    assert time.monotonic() < deadline, f"tasks not done in 30 s:\n{worker.log()}"
                    time.sleep(0.1)
            assert worker.stop() == 0, worker.log()
            configured = [
                line for line in worker.log().splitlines() if "celery_worker_configured" in line
            ]
            assert len(configured) == 1, worker.log()
            assert "pool='threads'" in configured[0]
            assert "loop='thread'" in configured[0]
            assert "loop_source='LOOPSAFE_WORKER_LOOP'" in configured[0]
            assert not _forbidden(worker.log()), worker.log()
        finally:
            client.close()
            worker.kill()
