"""Fork safety of engines, proven with real os.fork: the child never touches the parent's sockets."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import warnings

import pytest
from sqlalchemy import text

from loopsafe.db import Database

from .conftest import server_connections

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


async def _backend_pid(db: Database) -> int:
    async with db.session() as session:
        pid: int = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


def _child(db: Database, write_fd: int) -> None:
    """Runs in the forked child; reports over a pipe and leaves with os._exit (never returns)."""
    report: dict[str, object] = {}
    code = 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report["inherited_loops"] = db.pool_status()["loops"]
            gc.collect()  # the inherited connections' finalizers must stay silent
            report["child_backend"] = asyncio.run(_backend_pid(db))
            gc.collect()
        report["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    except BaseException as error:  # report anything; an exception must not escape a fork child
        report["error"] = f"{type(error).__name__}: {error}"
        code = 1
    finally:
        os.write(write_fd, json.dumps(report).encode())
        os._exit(code)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.both_loops
async def test_child_drops_inherited_engine_and_parent_keeps_its_connection(
    postgres_url: str, db_name: str, app_name: str, driver: str
) -> None:
    url = postgres_url.replace("postgresql://", f"postgresql+{driver}://", 1)
    db = Database(url, name=db_name)
    before = await _backend_pid(db)

    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns about fork() in a process with threads; this test means it.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - measured in the child
        os.close(read_fd)
        _child(db, write_fd)
    os.close(write_fd)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        report = json.loads(pipe.read())

    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report["inherited_loops"] == 0  # dropped at fork, before the child could use it
    assert report["warnings"] == []
    assert report["child_backend"] != before  # the child opened its own connection
    # The parent's pooled connection survived the child: same backend, still answering.
    assert await _backend_pid(db) == before
    assert db.pool_status()["checked_in"] == 1
    assert await server_connections(postgres_url, app_name) == 1
