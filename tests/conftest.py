"""Suite-wide fixtures: loop factories for tests that must hold on asyncio and uvloop alike.

Real-server fixtures (`postgres_url`, `redis_url`) come from the opt-in loopsafe.testing plugin,
enabled below; this suite is its first user.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pytest

import loopsafe

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
T = TypeVar("T")

#: ``LOOPSAFE_TEST_TIER=full`` (CI's first suite stage) also runs the slow tier: tests whose
#: ground the quick tier covers more cheaply. ``make test`` alone runs the quick tier. The example
#: app's tests read the same variable (``roadmap_testkit.FULL_TIER``).
FULL_TIER = os.environ.get("LOOPSAFE_TEST_TIER", "") == "full"
slow_tier = pytest.mark.skipif(
    not FULL_TIER, reason="slow tier: runs with LOOPSAFE_TEST_TIER=full (as CI does)"
)


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


pytest_plugins = ["pytester", "loopsafe.testing"]


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


#: Seconds a fresh interpreter may take for its one test before it is killed.
FRESH_INTERPRETER_DEADLINE = 60.0

# Runs one test function in a new interpreter: its arguments are importable objects named
# "module:qualname" (the parametrised fork function), warnings are errors as under pytest.
_RUN_ONE = """
import importlib, sys
def named(spec):
    module, _, name = spec.partition(":")
    value = importlib.import_module(module)
    for part in name.split("."):
        value = getattr(value, part)
    return value
test = named(sys.argv[1])
test(**{key: named(spec) for key, spec in (arg.split("=", 1) for arg in sys.argv[2:])})
print("passed")
"""


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a test marked ``fresh_interpreter`` alone in a new interpreter, within a deadline.

    A fork that skips the at-fork hooks copies every lock another thread holds at that moment;
    in a shared run (embedded-server threads, the loop reaper) a child once deadlocked on one.
    A new interpreter has only the test's own threads. Such tests take no fixtures: only
    parameters that are importable functions.
    """
    if pyfuncitem.get_closest_marker("fresh_interpreter") is None:
        return None
    arguments = []
    for name in pyfuncitem._fixtureinfo.argnames:
        value = pyfuncitem.funcargs[name]
        module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
        if module is None or "<" in qualname:
            raise TypeError(
                f"a fresh_interpreter test takes importable arguments, {name}={value!r}"
            )
        arguments.append(f"{name}={module}:{qualname}")
    test = f"{pyfuncitem.module.__name__}:{pyfuncitem.originalname}"
    rootdir = pyfuncitem.config.rootpath
    command = [sys.executable, "-W", "error", "-c", _RUN_ONE, test, *arguments]
    try:
        done = subprocess.run(
            command,
            cwd=rootdir,
            capture_output=True,
            text=True,
            timeout=FRESH_INTERPRETER_DEADLINE,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:  # subprocess.run has killed it
        seen = timeout.stderr.decode() if isinstance(timeout.stderr, bytes) else timeout.stderr
        pytest.fail(
            f"{pyfuncitem.nodeid} did not finish within {FRESH_INTERPRETER_DEADLINE:g} s in a "
            f"fresh interpreter and was killed:\n{seen or ''}",
            pytrace=False,
        )
    if done.returncode != 0 or done.stdout.strip() != "passed":
        pytest.fail(
            f"{pyfuncitem.nodeid} failed in a fresh interpreter (exit {done.returncode}):\n"
            f"{done.stdout}\n{done.stderr}",
            pytrace=False,
        )
    return True


def _unclosed_streams() -> list[str]:
    """asyncio stream writers still open on a closed loop: each would warn at interpreter exit."""
    from loopsafe import _release

    gc.collect()
    # Kept on purpose (their sockets let go without I/O) and quieted at exit by loopsafe itself.
    kept = {id(obj) for obj in _release._kept}
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.StreamWriter) and id(obj.transport) not in kept:
            transport = obj.transport
            loop = getattr(obj, "_loop", None)
            if not transport.is_closing() and loop is not None and loop.is_closed():
                referrers = [type(ref).__name__ for ref in gc.get_referrers(obj)]
                found.append(f"{obj!r} (held by {', '.join(referrers)})")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a stream outlived its loop unclosed.

    Its ResourceWarning ("loop is closed") would come only at interpreter exit, after pytest
    ends, where no filterwarnings reaches: a leak of exactly the kind loopsafe exists to prevent.
    """
    leaked = _unclosed_streams()
    if leaked:
        session.config.get_terminal_writer().line(
            "asyncio streams left open on a closed loop:\n  " + "\n  ".join(leaked), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
