"""The pytest fixtures of `loopsafe.testing`, kept apart so that module imports without pytest."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ._registry import collect_abandoned
from ._servers import EmbeddedPostgres, EmbeddedRedis

__all__ = ("loopsafe_isolation", "postgres_url", "redis_url")


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
