"""`await_bounded`: await something for at most a time bound, even if it swallows cancellation.

`asyncio.wait_for` and `asyncio.timeout` cancel at the bound and then wait, unbounded, for the
cancellation to land; code that catches `CancelledError` (a driver's close, a user's ``finally``
that awaits a dead server) would hold the caller forever. Here the cancelled awaitable gets a
grace period, and is left running on its loop after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from ._errors import BoundExceededError

__all__ = ("DEFAULT_GRACE", "await_bounded")

T = TypeVar("T")

#: How long a cancelled awaitable may take to finish its cleanup before it is left behind.
DEFAULT_GRACE = 1.0


async def await_bounded(
    awaitable: Awaitable[T], timeout: float, *, grace: float = DEFAULT_GRACE
) -> T:
    """Await `awaitable` in a task of its own; after `timeout` seconds cancel it and raise.

    Raises `BoundExceededError` (a `TimeoutError`) once the bound has passed and the cancelled
    task has finished its cleanup or `grace` more seconds have gone by, whichever is first
    (``settled`` says which). If the caller itself is cancelled, the task is cancelled too and
    gets the same grace before the cancellation propagates. Works on Python 3.10 (no
    `asyncio.timeout` needed). Other exceptions of `awaitable` propagate unchanged.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:
        await _cancel_within(task, grace)
        raise
    if done:
        return task.result()
    settled = await _cancel_within(task, grace)
    raise BoundExceededError(timeout, grace, settled=settled)


async def _cancel_within(task: asyncio.Future[Any], grace: float) -> bool:
    """Cancel `task` and wait up to `grace` seconds for it; True if it finished."""
    task.cancel()
    done, _ = await asyncio.wait((task,), timeout=grace)
    # Whatever it ends with is superseded by the timeout or the caller's cancellation: mark it
    # retrieved now or later, so asyncio does not log "exception was never retrieved".
    task.add_done_callback(_retrieve)
    return bool(done)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
