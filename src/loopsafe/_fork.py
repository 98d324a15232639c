"""Fork awareness: runs loopsafe's resets in a forked child, with or without `os.register_at_fork`."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ("check_pid", "generation", "on_fork_in_child")

_callbacks: list[Callable[[], None]] = []
_callbacks_lock = threading.Lock()
_pid = os.getpid()
_generation = 0


def generation() -> int:
    """How many forks this process descends from since loopsafe was imported (0 in the original)."""
    return _generation


def on_fork_in_child(callback: Callable[[], None]) -> None:
    """Run `callback` in every forked child, after the callbacks registered before it.

    Callbacks must not do I/O on inherited resources: the sockets are shared with the parent.
    """
    with _callbacks_lock:
        _callbacks.append(callback)


def check_pid() -> bool:
    """Run the child-side resets now if this process forked without the at-fork hooks.

    Forks that bypass `os.register_at_fork` (a C extension calling fork() directly) are caught here,
    on every lookup that is not served from a loop's own cache. Returns True if it reset anything.
    """
    if os.getpid() == _pid:
        return False
    _after_fork_in_child()
    return True


def _after_fork_in_child() -> None:
    global _pid, _generation, _callbacks_lock
    _pid = os.getpid()
    _generation += 1
    # The parent may have held this lock in another thread at the moment of fork; in the child
    # that thread does not exist, so a fresh lock is the only safe one.
    _callbacks_lock = threading.Lock()
    for callback in list(_callbacks):
        callback()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
