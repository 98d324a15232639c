"""Loop ownership: which loop and process made a resource, and the error for using it elsewhere."""

from __future__ import annotations

import asyncio
import os
import weakref

from . import _fork
from ._asyncio_compat import get_running_loop_or_none
from ._errors import WrongLoopError
from ._registry import describe_loop

__all__ = ("LoopOwner",)


class LoopOwner:
    """The event loop and process a resource was made in; `check()` refuses every other one.

    ``what`` names the resource ("The engine of loopsafe Database 'x'") and ``fix`` says how to
    use it correctly; both go into the `WrongLoopError`, so db, redis and future integrations
    report misuse the same way.
    """

    __slots__ = ("description", "fix", "generation", "loop_ref", "pid", "what")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, what: str, fix: str) -> None:
        self.loop_ref = weakref.ref(loop)
        self.description = describe_loop(loop)
        self.pid = os.getpid()
        # The fork generation rather than os.getpid() on each check: getpid() is a system call
        # and this runs on every checkout.
        self.generation = _fork.generation()
        self.what = what
        self.fix = fix

    def check(self) -> None:
        """Raise `WrongLoopError` if the running loop (or process) is not the owner's.

        Synchronous use (no running loop) passes: the library underneath reports that itself.
        """
        running = get_running_loop_or_none()
        if running is not None and (
            running is not self.loop_ref() or self.generation != _fork.generation()
        ):
            raise self.error(running)

    def error(self, running: asyncio.AbstractEventLoop | None) -> WrongLoopError:
        """The `WrongLoopError` for using the resource on `running`."""
        if self.pid != os.getpid():
            where = f"in process {self.pid} and used in its forked child {os.getpid()}"
        else:
            owner = self.loop_ref()
            state = "which has ended" if owner is None or owner.is_closed() else "still running"
            where = f"on {self.description} ({state}) and used on {describe_loop(running)}"
        return WrongLoopError(f"{self.what} was created {where}. {self.fix}")
