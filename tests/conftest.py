"""Suite-wide fixtures: loop factories for tests that must hold on asyncio and uvloop alike.

Real-server fixtures (`postgres_url`, `redis_url`) come from the loopsafe.testing plugin, which
installing loopsafe registers; this suite is its first user.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pytest

import loopsafe

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
T = TypeVar("T")


def _factories() -> dict[str, LoopFactory]:
    factories: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the test extra on every CI platform
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories


LOOP_FACTORIES = _factories()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    """Run async tests marked ``both_loops`` once per loop implementation, the rest on asyncio."""
    if item.get_closest_marker("both_loops"):
        return LOOP_FACTORIES
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """For sync tests that create their own loops: each loop implementation in turn."""
    return LOOP_FACTORIES[request.param]


pytest_plugins = ["pytester"]


def run_on_new_loop(factory: LoopFactory, coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run() with a chosen loop implementation (asyncio.Runner needs Python 3.11)."""
    loop = factory()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of every `event` loopsafe logged during the test, in order."""
    return [
        getattr(record, "loopsafe_fields", {})
        for record in caplog.records
        if getattr(record, "loopsafe_event", None) == event
    ]


def attach_a_new_loop() -> None:
    """Run a loopsafe lookup on a brand-new loop: a moment where abandoned instances are dropped.

    Reads (len(), stats()) never drop anything; a new loop attached is the documented point.
    """
    local = loopsafe.LoopLocal(object, name="tests.attach_a_new_loop")

    async def touch() -> None:
        local.get()

    asyncio.run(touch())
