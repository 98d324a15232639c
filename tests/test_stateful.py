"""Random interleavings of loops, lookups, closes, fork resets and threads never leak or cross."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import loopsafe
from loopsafe import LoopLocal

_serial = itertools.count()


class Thing:
    def __init__(self, registry: str) -> None:
        self.registry = registry
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.serial = next(_serial)
        self.closed_in: asyncio.AbstractEventLoop | None = None
        self.dropped = False

    async def aclose(self) -> None:
        assert not self.released, "closed twice, or closed after a drop"
        self.closed_in = asyncio.get_running_loop()

    def drop(self) -> None:
        assert not self.released, "released twice"
        self.dropped = True

    @property
    def released(self) -> bool:
        return self.closed_in is not None or self.dropped


async def _attach(local: LoopLocal[Thing]) -> None:
    local.get()


class RegistryMachine(RuleBasedStateMachine):
    """Model: for each open loop, which instance each registry holds (at most one)."""

    def __init__(self) -> None:
        super().__init__()
        self.locals = [
            LoopLocal(
                functools.partial(Thing, f"r{n}"),
                aclose=Thing.aclose,
                drop=Thing.drop,
                name=f"r{n}",
            )
            for n in range(2)
        ]
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.model: dict[tuple[int, int], Thing] = {}  # (loop index, registry index) -> instance
        self.everything: list[Thing] = []

    def _run(self, loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
        return loop.run_until_complete(coro)

    @rule()
    def new_loop(self) -> None:
        self.loops.append(asyncio.new_event_loop())

    @precondition(lambda self: any(not loop.is_closed() for loop in self.loops))
    @rule(pick=st.integers(0, 50), which=st.integers(0, 1))
    def get(self, pick: int, which: int) -> None:
        index = self._open_loop(pick)
        loop = self.loops[index]

        async def get() -> Thing:
            return self.locals[which].get()

        thing = self._run(loop, get())
        assert thing.loop is loop, "an instance from another loop"
        assert not thing.released, "a closed or dropped instance was handed out"
        known = self.model.get((index, which))
        if known is None:
            self.model[(index, which)] = thing
            self.everything.append(thing)
        else:
            assert thing is known

    @precondition(lambda self: any(not loop.is_closed() for loop in self.loops))
    @rule(pick=st.integers(0, 50), which=st.integers(0, 1))
    def aclose_one(self, pick: int, which: int) -> None:
        index = self._open_loop(pick)
        self._run(self.loops[index], self.locals[which].aclose())
        thing = self.model.pop((index, which), None)
        if thing is not None:
            assert thing.closed_in is self.loops[index]

    @precondition(lambda self: any(not loop.is_closed() for loop in self.loops))
    @rule(pick=st.integers(0, 50), clean=st.booleans())
    def close_loop(self, pick: int, clean: bool) -> None:
        index = self._open_loop(pick)
        loop = self.loops[index]
        if clean:
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        for which in range(2):
            thing = self.model.pop((index, which), None)
            if thing is not None and clean:
                assert thing.closed_in is loop, "not closed inside its own loop"

    @rule()
    def fork_reset(self) -> None:
        loopsafe.reset_after_fork()
        for thing in self.model.values():
            assert thing.dropped
            assert thing.closed_in is None
        self.model.clear()

    @rule(which=st.integers(0, 1))
    def use_from_another_thread(self, which: int) -> None:
        seen: list[Thing] = []

        async def use() -> None:
            thing = self.locals[which].get()
            assert thing.thread == threading.get_ident()
            seen.append(thing)

        thread = threading.Thread(target=asyncio.run, args=(use(),))
        thread.start()
        thread.join(10)
        assert len(seen) == 1
        assert seen[0] not in self.model.values(), "a thread got a main-thread loop's instance"
        assert seen[0].closed_in is seen[0].loop, "the thread's loop did not close its instance"
        self.everything.append(seen[0])

    @invariant()
    def counts_match_the_model(self) -> None:
        for which, local in enumerate(self.locals):
            expected = sum(1 for (_, w) in self.model if w == which)
            assert len(local) == expected

    def _open_loop(self, pick: int) -> int:
        open_indexes = [i for i, loop in enumerate(self.loops) if not loop.is_closed()]
        return open_indexes[pick % len(open_indexes)]

    def teardown(self) -> None:
        for loop in self.loops:
            if not loop.is_closed():
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        for local in self.locals:
            assert len(local) == 0
        # A new loop is where instances of loops closed without disposal are dropped.
        asyncio.run(_attach(self.locals[0]))
        leaked = [thing for thing in self.everything if not thing.released]
        assert not leaked, f"never closed nor dropped: {leaked}"


RegistryMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_registry_state_machine = RegistryMachine.TestCase
