"""Let go of a connection's socket without sending a byte: after a fork, or when its loop died.

One way for every driver. asyncio's own transports on a closed loop give their socket up: this
process's descriptor is closed and the transport is told it is closing, so its finalizer stays
quiet. In a forked child that drops only the child's reference (the kernel sends nothing until the
last descriptor goes, and the parent's registration in the shared epoll set stays); in the owning
process it closes the connection, so the server frees it at once. Transports that keep their
socket out of reach (uvloop's, in C), and any transport whose loop is still open, have the
descriptor pointed at ``/dev/null`` instead, and are kept alive for good: their finalizer would
unregister the descriptor from an epoll set the parent still uses, or warn about a closed loop.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Any

from ._asyncio_compat import loop_of, take_socket

__all__ = ("keep_forever", "release_transport")

# The one keep-alive list. It grows only when a loop ends without disposal or a process forks
# with live connections on a transport that hides its socket.
_kept: list[object] = []
_kept_lock = threading.Lock()


def keep_forever(*objects: object) -> None:
    """Keep `objects` reachable for the life of the process, so their finalizers never run."""
    with _kept_lock:
        _kept.extend(objects)


def release_transport(transport: Any, *owners: object) -> None:
    """Take `transport`'s socket away from this process without I/O.

    `owners` are the objects around the transport (a driver connection, a stream reader/writer)
    that must outlive it if it has to be kept forever. Nothing is written on the socket.
    """
    if transport is None:
        return
    loop = loop_of(transport)
    # Close the socket only where no selector still maps its descriptor. A live loop's selector
    # does: a new socket given the freed number would fail to register (epoll_ctl MOD: ENOENT,
    # seen with redis-py < 8 reconnecting on the same loop), and unregistering it instead could
    # remove a parent's registration from the epoll set a forked child shares.
    if loop is None or loop.is_closed():
        sock = take_socket(transport)
        if sock is not None:
            sock.close()
            return
    _point_at_devnull(transport)
    keep_forever(transport, *owners)


def _quiet_at_exit() -> None:
    """Let the kept transports go quietly before the interpreter tears its modules down.

    "For good" ends at exit: the list is freed with this module, and each kept stream writer then
    warned "loop is closed" (a ResourceWarning printed after the test suite, outside any
    filterwarnings). Their descriptors point at /dev/null by now, so closing them sends nothing
    and touches no registration a forked parent still uses.
    """
    with _kept_lock:
        kept = list(_kept)
    for transport in kept:
        sock = take_socket(transport)
        if sock is not None:
            sock.close()


atexit.register(_quiet_at_exit)


def _point_at_devnull(transport: Any) -> None:
    # The descriptor number stays taken (by /dev/null) while the transport lives, so nothing can
    # reuse it and have it closed by mistake later.
    sock = transport.get_extra_info("socket")
    fileno = sock.fileno() if sock is not None else -1
    if fileno < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        with contextlib.suppress(OSError):
            os.dup2(devnull, fileno)
    finally:
        os.close(devnull)
