"""The private parts of asyncio loopsafe relies on, in one place, checked against each release.

Private names used: ``asyncio.events._get_running_loop``, ``BaseEventLoop``'s instance flag
``_asyncgens_shutdown_called``, and a selector transport's ``_sock`` and ``_closing``. Checked
against CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0; tests/test_compat.py fails loudly if a
release moves any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from asyncio.events import _get_running_loop
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = (
    "asyncgens_shut_down",
    "cancellation_kept",
    "get_running_loop_or_none",
    "loop_of",
    "settled_within",
    "take_socket",
)

#: The running loop or None, without the exception `asyncio.get_running_loop()` raises: the C
#: function behind it costs a quarter of a raising call, and lookups run on every `get()`.
get_running_loop_or_none = _get_running_loop


def asyncgens_shut_down(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop.shutdown_asyncgens()` has run (a generator started later is never closed).

    uvloop does not expose the flag; there the answer is False.
    """
    return bool(getattr(loop, "_asyncgens_shutdown_called", False))


async def settled_within(future: asyncio.Future[Any], timeout: float) -> bool:
    """Wait up to `timeout` seconds for `future` to settle, leaving it as it is; True if it did.

    Not ``asyncio.wait_for(asyncio.shield(future), timeout)``: before 3.12, a cancellation that
    arrives in the loop iteration where `future` settles is swallowed there (CPython gh-86296),
    and the cancelled caller goes on waiting. ``asyncio.wait`` always raises the cancellation.
    """
    done, _ = await asyncio.wait((future,), timeout=timeout)
    return bool(done)


_T = TypeVar("_T")


async def cancellation_kept(awaitable: Awaitable[_T]) -> _T:
    """Await `awaitable` so that a cancellation of the caller always raises here.

    Before 3.12, ``asyncio.wait_for`` swallows a cancellation that arrives in the loop iteration
    where what it waits for finishes (CPython gh-86296), and redis-py wraps every socket write in
    ``wait_for`` (its default ``socket_timeout`` is 5 s): a task cancelled during a Redis command
    could go on as if it had never been cancelled. There `awaitable` runs in a task of its own
    and the caller waits with ``asyncio.wait``, which always raises the cancellation; the inner
    task is then cancelled and waited for, so a lock held around the call is released only once
    the command has ended (a further cancellation meanwhile is folded into the one raised).
    """
    if sys.version_info >= (3, 12):
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait((task,))
    except asyncio.CancelledError:
        task.cancel()
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved: the caller is cancelled, not failed
        raise
    return task.result()


def loop_of(transport: Any) -> asyncio.AbstractEventLoop | None:
    """The loop an asyncio or uvloop transport was made on (None if it does not say)."""
    loop = getattr(transport, "_loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def take_socket(transport: Any) -> socket.socket | None:
    """Take the socket away from one of asyncio's own transports, which then counts as closing.

    Its finalizer then neither warns nor closes anything. None (and nothing changed) for
    transports that keep their socket out of reach, such as uvloop's.
    """
    sock = getattr(transport, "_sock", None)
    if not isinstance(sock, socket.socket):
        return None
    transport._sock = None
    transport._closing = True
    return sock
