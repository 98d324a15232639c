"""Fixtures for loopsafe.db: unique app names, server-side connection counts, a real PgBouncer."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from loopsafe.db import _default
from loopsafe.testing import PgBouncer


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


@pytest.fixture(scope="session")
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    """A real PgBouncer in transaction mode in front of the test PostgreSQL (its URL).

    Few server connections (3) for many clients, so clients really do share server sessions.
    """
    try:
        bouncer = PgBouncer(postgres_url, default_pool_size=3, max_client_conn=500)
    except FileNotFoundError as error:
        pytest.skip(str(error))
    with bouncer:
        yield bouncer.url
