"""Disposal at loop end: every instance closed inside its own loop, isolated and bounded."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

import anyio
import pytest

import loopsafe
from loopsafe import LoopLocal, aclose_all

from .conftest import LoopFactory, attach_a_new_loop, logged


class Counted:
    """A resource that counts opens and closes, and insists on closing in its own loop."""

    opened = 0
    closed_in_own_loop = 0

    def __init__(self) -> None:
        Counted.opened += 1
        self.loop = asyncio.get_running_loop()
        self.dropped = False

    async def aclose(self) -> None:
        assert asyncio.get_running_loop() is self.loop
        assert not self.loop.is_closed()
        await asyncio.sleep(0)  # a real close does I/O: the loop must still run
        Counted.closed_in_own_loop += 1


def _drop(resource: Counted) -> None:
    resource.dropped = True


def test_500_asyncio_run_calls_close_every_open_in_its_own_loop(
    loop_factory: LoopFactory,
) -> None:
    Counted.opened = Counted.closed_in_own_loop = 0
    local = LoopLocal(Counted, drop=_drop, name="counted")

    async def task() -> None:
        local.get()
        await asyncio.sleep(0)

    for _ in range(500):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(task())
    assert Counted.opened == 500
    assert Counted.closed_in_own_loop == 500
    assert len(local) == 0


def test_anyio_run_closes_instances_inside_its_loop() -> None:
    Counted.opened = Counted.closed_in_own_loop = 0
    local = LoopLocal(Counted)

    async def main() -> None:
        local.get()

    anyio.run(main, backend="asyncio")
    assert (Counted.opened, Counted.closed_in_own_loop) == (1, 1)


@pytest.mark.both_loops
async def test_aclose_all_closes_newest_first_inside_this_loop() -> None:
    order: list[str] = []
    loop = asyncio.get_running_loop()

    def closer(label: str) -> LoopLocal[str]:
        async def close(_: str) -> None:
            assert asyncio.get_running_loop() is loop
            order.append(label)

        return LoopLocal(lambda: label, aclose=close, name=label)

    engine, session, client = closer("engine"), closer("session"), closer("client")
    engine.get()
    session.get()
    client.get()
    await aclose_all()
    assert order == ["client", "session", "engine"]
    assert (engine.peek(), session.peek(), client.peek()) == (None, None, None)


def test_a_failing_or_hanging_close_never_stops_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []
    dropped: list[str] = []

    async def fail(_: str) -> None:
        raise ConnectionResetError("peer went away")

    async def hang(_: str) -> None:
        await asyncio.sleep(3600)

    async def stubborn(_: str) -> None:
        # Swallows cancellation: the worst case for a bounded shutdown.
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)

    async def fine(label: str) -> None:
        closed.append(label)

    locals_ = [
        LoopLocal(lambda: "first", aclose=fine, name="first"),
        LoopLocal(lambda: "fails", aclose=fail, drop=dropped.append, name="fails"),
        LoopLocal(lambda: "hangs", aclose=hang, drop=dropped.append, name="hangs",
                  close_timeout=0.2),
        LoopLocal(lambda: "stubborn", aclose=stubborn, drop=dropped.append, name="stubborn",
                  close_timeout=0.2),
        LoopLocal(lambda: "last", aclose=fine, name="last"),
    ]  # fmt: skip

    async def main() -> None:
        for local in locals_:
            local.get()

    caplog.set_level(logging.WARNING, logger="loopsafe")
    asyncio.run(main())
    assert closed == ["last", "first"]
    assert sorted(dropped) == ["fails", "hangs", "stubborn"]
    failures = logged(caplog, "loopsafe.instance_close_failed")
    assert sorted(fields["registry"] for fields in failures) == [
        "fails",
        "hangs",
        "stubborn",
    ]
    assert "ConnectionResetError: peer went away" in caplog.text
    assert "did not finish within 0.2 s" in caplog.text
    assert all(len(local) == 0 for local in locals_)


def test_an_instance_created_while_disposing_is_closed_too() -> None:
    closed: list[str] = []

    async def close_b(_: str) -> None:
        closed.append("b")

    b = LoopLocal(lambda: "b", aclose=close_b, name="b")

    async def close_a(_: str) -> None:
        b.get()  # e.g. a close that logs through a loop-local client made on demand
        closed.append("a")

    a = LoopLocal(lambda: "a", aclose=close_a, name="a")

    async def main() -> None:
        a.get()

    asyncio.run(main())
    assert closed == ["a", "b"]


def test_async_generators_finishing_at_shutdown_can_still_use_the_resource() -> None:
    local = LoopLocal(Counted)
    used_in_finally: list[bool] = []

    async def stream() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            resource = local.get()
            await asyncio.sleep(0)
            used_in_finally.append(resource.loop is asyncio.get_running_loop())

    async def main() -> AsyncIterator[int]:
        local.get()
        agen = stream()
        await agen.__anext__()
        return agen  # left suspended: asyncio.run closes it at shutdown, beside our finalizer

    Counted.opened = Counted.closed_in_own_loop = 0
    leftover = asyncio.run(main())
    assert used_in_finally == [True]
    assert Counted.opened == Counted.closed_in_own_loop == 1
    del leftover


def test_a_loop_closed_without_shutdown_drops_its_instances_and_says_so(
    loop_factory: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loopsafe")
    local = LoopLocal(Counted, drop=_drop, name="abandoned-probe")

    async def use() -> Counted:
        return local.get()

    # Still referenced (the resource points at its loop): no longer live, dropped at the next
    # collection point, never by a read.
    kept_loop = loop_factory()
    kept = kept_loop.run_until_complete(use())
    kept_loop.close()
    assert len(local) == 0
    loopsafe.stats()
    assert not kept.dropped
    attach_a_new_loop()
    assert kept.dropped

    # Unreferenced: handed over when the loop is garbage collected, dropped at the next point.
    gone_loop = loop_factory()
    gone = gone_loop.run_until_complete(use())
    gone_loop.close()
    del gone_loop
    gone.loop = None
    gc.collect()
    assert not gone.dropped  # no user code ran inside garbage collection
    attach_a_new_loop()
    assert gone.dropped

    abandoned = logged(caplog, "loopsafe.instance_abandoned")
    assert len(abandoned) == 2
    assert {fields["registry"] for fields in abandoned} == {"abandoned-probe"}
    assert local.peek() is None
