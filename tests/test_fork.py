"""Fork safety, proven in real child processes: inherited instances are dropped, never closed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

import loopsafe
from loopsafe import LoopLocal

from .conftest import logged
from .forking import FORKS, in_child, libc_fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class Conn:
    """Stands in for a pooled connection: closing it gracefully would hit the shared socket."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.closed_by: list[int] = []
        self.dropped_by: list[int] = []

    async def aclose(self) -> None:
        self.closed_by.append(os.getpid())

    def drop(self) -> None:
        self.dropped_by.append(os.getpid())


def _make_local() -> LoopLocal[Conn]:
    return LoopLocal(Conn, aclose=Conn.aclose, drop=Conn.drop, name="conn")


def _child_report(
    local: LoopLocal[Conn], inherited: Conn, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    """What a child sees: a fresh instance on a new loop and on the inherited loop object."""

    async def fresh() -> dict[str, Any]:
        conn = local.get()
        return {"pid": conn.pid, "is_inherited": conn is inherited}

    on_new_loop = asyncio.run(fresh())
    inherited_loop_report = loop.run_until_complete(fresh())
    return {
        "pid": os.getpid(),
        "new_loop": on_new_loop,
        "inherited_loop": inherited_loop_report,
        "inherited_closed_by": inherited.closed_by,
        "inherited_dropped_by": inherited.dropped_by,
    }


@pytest.mark.parametrize("fork", FORKS)
def test_forked_child_drops_inherited_instances_and_parent_keeps_its_own(
    fork: Callable[[], int],
) -> None:
    local = _make_local()
    loop = asyncio.new_event_loop()
    try:
        parent_conn = loop.run_until_complete(_get(local))
        report = in_child(lambda: _child_report(local, parent_conn, loop), fork=fork)

        assert report["pid"] != os.getpid()
        assert report["new_loop"] == {"pid": report["pid"], "is_inherited": False}
        assert report["inherited_loop"] == {"pid": report["pid"], "is_inherited": False}
        assert report["inherited_closed_by"] == []  # no graceful close on a shared socket
        assert report["inherited_dropped_by"] == [report["pid"]]
        # The parent is untouched: same instance, never closed or dropped here.
        assert loop.run_until_complete(_get(local)) is parent_conn
        assert parent_conn.closed_by == parent_conn.dropped_by == []
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert parent_conn.closed_by == [os.getpid()]


async def _get(local: LoopLocal[Conn]) -> Conn:
    return local.get()


def _mp_child(queue: Any) -> None:
    # Module-level state inherited from the parent through the fork start method.
    queue.put(_child_report(_MP_LOCAL, _MP_STATE["conn"], _MP_STATE["loop"]))


_MP_LOCAL = _make_local()
_MP_STATE: dict[str, Any] = {}


def test_multiprocessing_fork_children_get_fresh_instances() -> None:
    context = multiprocessing.get_context("fork")
    loop = asyncio.new_event_loop()
    try:
        _MP_STATE["loop"] = loop
        _MP_STATE["conn"] = loop.run_until_complete(_get(_MP_LOCAL))
        queue = context.Queue()
        process = context.Process(target=_mp_child, args=(queue,))
        process.start()
        report = queue.get(timeout=30)
        process.join(30)
        assert process.exitcode == 0
        assert report["new_loop"]["is_inherited"] is False
        assert report["inherited_loop"]["is_inherited"] is False
        assert report["inherited_closed_by"] == []
        assert report["inherited_dropped_by"] == [report["pid"]]
        assert loop.run_until_complete(_get(_MP_LOCAL)) is _MP_STATE["conn"]
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        _MP_STATE.clear()


def test_reset_after_fork_logs_and_forgets_everything(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="loopsafe")
    local = _make_local()
    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(_get(local))
        loopsafe.reset_after_fork()
        assert len(local) == 0
        assert conn.dropped_by == [os.getpid()]
        assert conn.closed_by == []
        assert loop.run_until_complete(_get(local)) is not conn
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    resets = logged(caplog, "loopsafe.fork_reset")
    assert resets
    assert resets[-1]["dropped"] >= 1


def test_fork_hook_is_registered_in_a_fresh_interpreter() -> None:
    """`import loopsafe` alone arms the at-fork hook (no setup call needed)."""
    import subprocess

    code = """
import asyncio, os, loopsafe
dropped = []
local = loopsafe.LoopLocal(lambda: object(), drop=lambda _: dropped.append(os.getpid()))
async def get(): return local.get()
loop = asyncio.new_event_loop()
loop.run_until_complete(get())
pid = os.fork()
if pid == 0:
    os._exit(0 if dropped == [os.getpid()] else 3)
_, status = os.waitpid(pid, 0)
loop.run_until_complete(loop.shutdown_asyncgens()); loop.close()
raise SystemExit(os.waitstatus_to_exitcode(status))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.fresh_interpreter
def test_a_fork_without_hooks_never_hands_out_or_closes_inherited_instances_on_the_inherited_loop() -> (
    None
):
    """What holds for a fork that skips os.register_at_fork (see the registry's docstring).

    On the inherited loop object: `peek()` never returns the parent's instance, and running that
    loop to its end drops the parent's instance without closing it (no goodbye on a shared socket).
    """
    local = _make_local()
    loop = asyncio.new_event_loop()
    try:
        parent_conn = loop.run_until_complete(_get(local))

        def child() -> dict[str, Any]:
            async def peek() -> bool:
                return local.peek() is None

            peeked_nothing = loop.run_until_complete(peek())
            loop.run_until_complete(loop.shutdown_asyncgens())  # the inherited loop's end
            return {
                "pid": os.getpid(),
                "peeked_nothing": peeked_nothing,
                "closed_by": parent_conn.closed_by,
                "dropped_by": parent_conn.dropped_by,
            }

        report = in_child(child, fork=libc_fork)
        assert report["peeked_nothing"] is True
        assert report["closed_by"] == []
        assert report["dropped_by"] == [report["pid"]]
        assert loop.run_until_complete(_get(local)) is parent_conn
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert parent_conn.closed_by == [os.getpid()]


@pytest.mark.fresh_interpreter
def test_reset_after_fork_is_the_fix_for_a_child_that_reuses_the_inherited_loop_first() -> None:
    local = _make_local()
    loop = asyncio.new_event_loop()
    try:
        parent_conn = loop.run_until_complete(_get(local))

        def child() -> dict[str, Any]:
            loopsafe.reset_after_fork()
            conn = loop.run_until_complete(_get(local))
            return {"fresh": conn is not parent_conn, "dropped_by": parent_conn.dropped_by}

        report = in_child(child, fork=libc_fork)
        assert report["fresh"] is True
        assert len(report["dropped_by"]) == 1
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
