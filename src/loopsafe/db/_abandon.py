"""Let go of driver connections without I/O: after a fork, or when their loop died unclosed."""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ("abandon_connection",)

# Connections we could not release precisely are parked here for the life of the process: never
# collected means never finalized, and a driver's finalizer is exactly what must not run (it
# warns, and may talk to the server on a socket the parent process still uses).
_parked: list[Any] = []


def abandon_connection(dbapi_connection: Any, *, owner_pid: int) -> None:
    """Release one pooled connection without sending a byte and without warnings later.

    `owner_pid` is the process that opened it. In a forked child the socket is shared with that
    parent: closing the child's descriptor is harmless (the kernel only sends FIN when the last
    descriptor goes), whereas a graceful close would send Terminate and kill the parent's session
    (asyncpg's finalizer would even remove the socket from the *shared* epoll set). In the owning
    process (its loop closed without disposal) the socket is closed for real, so the server frees
    the backend at once instead of at garbage collection.
    """
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is None:
        _parked.append(dbapi_connection)
        return
    module = type(driver).__module__
    if module.startswith("asyncpg"):
        if _abandon_asyncpg(driver):
            return
        # Parked below; without this its finalizer would still warn, or terminate() at exit.
        driver._aborted = True
    if module.startswith("psycopg") and owner_pid == os.getpid():
        # libpq closes synchronously; in a child psycopg's own pid check skips PQfinish.
        pgconn = getattr(driver, "pgconn", None)
        if pgconn is not None:
            pgconn.finish()
            return
    _parked.append(dbapi_connection)


def _abandon_asyncpg(driver: Any) -> bool:
    transport: Any = getattr(driver, "_transport", None)
    sock = getattr(transport, "_sock", None)
    if not isinstance(sock, socket.socket):
        # uvloop's transports keep their socket in C; parking them is the no-I/O option there.
        return False
    # The transport's finalizer warns and closes whatever `_sock` it still holds; take the socket
    # away first so it stays quiet, then close only this process's descriptor.
    transport._sock = None
    transport._closing = True
    sock.close()
    # asyncpg's own finalizer warns "unclosed connection" and calls terminate() unless it sees
    # the connection as aborted.
    driver._aborted = True
    return True
