"""Running a coroutine now on an event loop that nobody is running (an idle per-thread loop).

A `run_async` per-thread loop runs only while its thread is inside a call: a callback scheduled
on it from another thread waits for that thread's next call, which may come late or never (the
thread ended and its loop waits for reuse). A resource that must act on such a loop now — a
`Database` closing an idle connection that a loop of another thread waits for — asks the loop's
runner, which registered itself here, to run the loop briefly on a thread of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ("IdleRunner", "owned", "register", "run_while_idle")

#: Starts running the coroutine `make()` returns on `loop` if the runner owns `loop` and nothing
#: runs it: True if it did, False if it owns `loop` but a call runs it, None if not its loop.
IdleRunner = Callable[
    [asyncio.AbstractEventLoop, Callable[[], Coroutine[Any, Any, object]]], "bool | None"
]

_runners: list[IdleRunner] = []
_owners: list[Callable[[asyncio.AbstractEventLoop], bool]] = []


def register(runner: IdleRunner, owns: Callable[[asyncio.AbstractEventLoop], bool]) -> None:
    """Add a runner of idle loops, and how to tell the loops it owns."""
    if runner not in _runners:
        _runners.append(runner)
        _owners.append(owns)


def owned(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop` is one that a registered runner leaves idle between calls."""
    return any(owns(loop) for owns in _owners)


def run_while_idle(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, object]]
) -> bool | None:
    """Have `make()` run on `loop` now if a runner owns it and no call runs it (True).

    False: a runner owns `loop` and a call runs it; do not schedule work on it from outside, as
    the call may end first and leave that work to another thread (a greenlet in flight cannot
    be resumed there). None: no runner owns `loop` (its own thread runs it, schedule as usual).
    """
    for runner in _runners:
        taken = runner(loop, make)
        if taken is not None:
            return taken
    return None
