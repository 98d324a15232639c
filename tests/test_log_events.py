"""The logging guide lists exactly the events loopsafe emits, at the levels it emits them."""

from __future__ import annotations

import ast
import asyncio
import importlib
import logging
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

import loopsafe
import loopsafe.http
import loopsafe.llm
import loopsafe.redis
from loopsafe import close_all_loops, run_async
from loopsafe.db import Database, PoolBudget

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guides" / "logging.md"
SOURCES = ROOT / "src" / "loopsafe"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
_ROW = re.compile(r"^\| `(loopsafe\.[a-z_.]+)` \| (DEBUG|INFO|WARNING|ERROR) \|", re.MULTILINE)


def documented_events() -> dict[str, str]:
    """Event name → level (upper case), from the logging guide's tables."""
    rows = _ROW.findall(GUIDE.read_text())
    events = dict(rows)
    assert len(events) == len(rows), "an event is listed twice in the logging guide"
    return events


def emitted_in_source() -> dict[str, str | None]:
    """Every event name the code logs → its level (None where the level is chosen at runtime).

    An event is the first argument of a ``<logger>.<level>("loopsafe.…", …)`` call, or an
    ``event="loopsafe.…"`` argument handed to the function that logs it.
    """
    events: dict[str, str | None] = {}
    for path in sorted(SOURCES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            first = node.args[0] if node.args else None
            # `"loopsafe.a" if x else "loopsafe.b"` names two events.
            names = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            for name in names:
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr in LEVELS
                    and isinstance(name, ast.Constant)
                    and isinstance(name.value, str)
                    and name.value.startswith("loopsafe.")
                ):
                    events[name.value] = func.attr.upper()
            for keyword in node.keywords:
                value = keyword.value
                if (
                    keyword.arg == "event"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    events.setdefault(value.value, None)
    return events


def test_the_guide_lists_every_event_the_code_emits_and_no_other() -> None:
    documented = documented_events()
    emitted = emitted_in_source()
    assert len(emitted) > 40  # the scan found the events, not nothing
    assert sorted(set(emitted) - set(documented)) == [], "emitted but not in the logging guide"
    assert sorted(set(documented) - set(emitted)) == [], "in the logging guide but never emitted"
    wrong_level = {
        event: (level, documented[event])
        for event, level in emitted.items()
        if level is not None and documented[event] != level
    }
    assert wrong_level == {}, "(emitted, documented) levels differ"


def test_the_readme_names_only_documented_events() -> None:
    named = set(
        re.findall(r"`(loopsafe\.[a-z_]+(?:\.[a-z_]+)?)`", (ROOT / "README.md").read_text())
    )
    events = {name for name in named if "_" in name.rsplit(".", 1)[-1] or name.count(".") == 1}
    not_events = {name for name in events if name not in documented_events()}
    # API names (`loopsafe.run_async`, `loopsafe.db.session`) are not events: they are attributes.
    assert {name for name in not_events if not _is_attribute(name)} == set()


def _is_attribute(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


@pytest.mark.postgres
@pytest.mark.redis
def test_a_representative_run_emits_only_documented_events_and_is_quiet_at_info(
    postgres_url: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registry, database (with a budget), Redis, LLM HTTP client, run_async: every event they
    log is in the guide, and a loop's end adds nothing at INFO beyond its engine's one line."""
    # Configured here, forgotten afterwards (the Redis and LLM packages' tests do the same).
    monkeypatch.setattr("loopsafe.redis._client._settings", None)
    monkeypatch.setattr("loopsafe.llm._settings._settings", None)
    monkeypatch.delenv("LOOPSAFE_LLM_NAMESPACE", raising=False)
    db_name = f"t{uuid.uuid4().hex[:12]}"
    caplog.set_level(logging.DEBUG, logger="loopsafe")
    local = loopsafe.LoopLocal(object, name="tests.log_events")
    db = Database(
        postgres_url, name=db_name, budget=PoolBudget(max_connections=4, processes=1, reserve=0)
    )
    loopsafe.redis.configure(redis_url)
    loopsafe.llm.configure()

    async def work() -> None:
        local.get()
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
        await loopsafe.redis.get_redis().ping()
        assert await loopsafe.redis.publish(f"{db_name}:events", "hello") is True
        loopsafe.http.get_http()

    for _ in range(3):
        asyncio.run(work())
    run_async(work())
    close_all_loops()

    seen: list[tuple[str, str | None, str]] = [
        (record.levelname, getattr(record, "loopsafe_event", None), record.name)
        for record in caplog.records
        if record.name.startswith("loopsafe")
    ]
    documented = documented_events()
    assert [entry for entry in seen if entry[1] not in documented] == []
    names = {event for _, event, _ in seen}
    assert {
        "loopsafe.instance_created",
        "loopsafe.instance_closed",
        "loopsafe.db.engine_created",
        "loopsafe.db.engine_disposed",
        "loopsafe.redis_client_created",
        "loopsafe.run_async_loop_created",
        "loopsafe.run_async_loop_closed",
    } <= names
    at_info = [str(event) for level, event, _ in seen if level != "DEBUG"]
    # Configuration once, then one engine line per loop (3 asyncio.run + 1 run_async loop).
    assert sorted(set(at_info)) == [
        "loopsafe.db.engine_created",
        "loopsafe.llm_configured",
        "loopsafe.redis_configured",
    ], at_info
    assert at_info.count("loopsafe.db.engine_created") == 4
