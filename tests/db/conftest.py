"""Fixtures for loopsafe.db: unique app names, server-side connection counts, a real PgBouncer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from loopsafe.db import _default
from loopsafe.testing import free_port

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests here that use the server fixtures need a real PostgreSQL: mark them so."""
    here = Path(__file__).parent
    for item in items:
        in_here = here in Path(str(item.path)).parents
        if in_here and "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def db_name() -> str:
    """A database name unique to this test: its connections show up as ``loopsafe:<name>``."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def app_name(db_name: str) -> str:
    """The application_name the test's Database uses by default."""
    return f"loopsafe:{db_name}"


@pytest.fixture(autouse=True)
def _no_default_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without a default database and without $DATABASE_URL."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    _default._reset_default()
    yield
    _default._reset_default()


class Raw:
    """A plain autocommit connection for setup and inspection (psycopg, outside loopsafe)."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection

    async def execute(self, sql: str, *args: object) -> None:
        await self.connection.execute(_placeholders(sql), args or None)

    async def fetchval(self, sql: str, *args: object) -> Any:
        cursor = await self.connection.execute(_placeholders(sql), args or None)
        row = await cursor.fetchone()
        return None if row is None else row[0]


def _placeholders(sql: str) -> Any:
    # "$1" (PostgreSQL's own style) to psycopg's "%s".
    return re.sub(r"\$\d+", "%s", sql)


@contextlib.asynccontextmanager
async def raw_connection(postgres_url: str) -> AsyncIterator[Raw]:
    """A plain autocommit connection for setup and inspection."""
    connection = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    try:
        yield Raw(connection)
    finally:
        await connection.close()


@pytest.fixture
async def table(postgres_url: str, db_name: str) -> AsyncIterator[str]:
    """An empty table ``(v int)`` unique to this test, dropped after it."""
    name = f"items_{db_name}"
    async with raw_connection(postgres_url) as raw:
        await raw.execute(f"CREATE TABLE {name} (v int)")
        try:
            yield name
        finally:
            await raw.execute(f"DROP TABLE {name}")


async def server_connections(postgres_url: str, application_name: str) -> int:
    """How many connections the server holds for `application_name` right now."""
    async with raw_connection(postgres_url) as raw:
        count: int = await raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    return count


async def wait_for_connections(
    postgres_url: str, application_name: str, expected: int, *, timeout: float = 10.0
) -> int:
    """Poll until the server shows `expected` connections (the server reaps asynchronously)."""
    deadline = time.monotonic() + timeout
    count = await server_connections(postgres_url, application_name)
    while count != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = await server_connections(postgres_url, application_name)
    return count


@contextlib.asynccontextmanager
async def limited_role(postgres_url: str, limit: int) -> AsyncIterator[str]:
    """A login role the server itself holds to `limit` connections; yields a URL that uses it.

    One connection more is refused by PostgreSQL ("too many connections for role", SQLSTATE
    53300), however briefly it would have lasted: a budget test then fails instead of hoping a
    sampler looked at the right moment. The role's backends leave the ProcArray before the client
    sees its connection close, so a close followed at once by a connect is counted correctly.
    """
    role = f"loopsafe_{uuid.uuid4().hex[:12]}"
    async with raw_connection(postgres_url) as raw:
        await raw.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {int(limit)}")
    try:
        yield make_url(postgres_url).set(username=role, password=None).render_as_string(False)
    finally:
        async with raw_connection(postgres_url) as raw:
            # Only this test's own role: other databases' sessions are never touched.
            await raw.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
            )
            for _ in range(200):  # the terminated backends leave within moments
                if not await raw.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role
                ):
                    break
                await asyncio.sleep(0.05)
            await raw.execute(f"DROP ROLE {role}")


TOO_MANY = "too many connections for role"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"pgbouncer did not start on port {port}: {tail}")


@pytest.fixture(scope="session")
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    """A real PgBouncer in transaction mode in front of the test PostgreSQL (its URL).

    Few server connections (3) for many clients, so clients really do share server sessions.
    """
    if PGBOUNCER is None:
        pytest.skip("the pgbouncer binary is not installed (Debian/Ubuntu: apt install pgbouncer)")
    upstream = make_url(postgres_url)
    user = upstream.username or "postgres"
    directory = Path(tempfile.mkdtemp(prefix="loopsafe-pgbouncer-"))
    directory.chmod(0o755)
    port = free_port()
    log = directory / "pgbouncer.log"
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 500\n"
        "unix_socket_dir =\n"
        f"logfile = {log}\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    # PgBouncer refuses to run as root.
    as_user = "nobody" if os.geteuid() == 0 else None
    if as_user is not None:
        log.touch()
        os.chown(log, *_ids(as_user))
    process = subprocess.Popen(
        [PGBOUNCER, str(directory / "pgbouncer.ini")],
        user=as_user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, log)
        url = upstream.set(port=port, host="127.0.0.1")
        yield url.render_as_string(hide_password=False)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - pgbouncer exits on SIGTERM
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    account = pwd.getpwnam(user)
    return account.pw_uid, account.pw_gid
