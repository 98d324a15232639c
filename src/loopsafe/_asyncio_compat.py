"""The private parts of asyncio loopsafe relies on, in one place, checked against each release.

Private names used: ``asyncio.events._get_running_loop`` and ``BaseEventLoop``'s instance flag
``_asyncgens_shutdown_called``. Checked against CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0;
tests/test_compat.py fails loudly if a release moves either.
"""

from __future__ import annotations

import asyncio
from asyncio.events import _get_running_loop

__all__ = ("asyncgens_shut_down", "get_running_loop_or_none")

#: The running loop or None, without the exception `asyncio.get_running_loop()` raises: the C
#: function behind it costs a quarter of a raising call, and lookups run on every `get()`.
get_running_loop_or_none = _get_running_loop


def asyncgens_shut_down(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop.shutdown_asyncgens()` has run (a generator started later is never closed).

    uvloop does not expose the flag; there the answer is False.
    """
    return bool(getattr(loop, "_asyncgens_shutdown_called", False))
