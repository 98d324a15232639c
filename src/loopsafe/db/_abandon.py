"""Let go of driver connections without I/O: after a fork, or when their loop died unclosed."""

from __future__ import annotations

import os
from typing import Any

from .._release import keep_forever, release_transport
from ._asyncpg_compat import is_asyncpg, mark_aborted, transport_of

__all__ = ("abandon_connection",)


def abandon_connection(dbapi_connection: Any, *, owner_pid: int) -> None:
    """Release one pooled connection without sending a byte and without warnings later.

    `owner_pid` is the process that opened it. In a forked child the socket is shared with that
    parent: a graceful close would send Terminate and kill the parent's session (asyncpg's
    finalizer would even remove the socket from the *shared* epoll set), so only this process's
    descriptor goes (see `release_transport`). In the owning process (its loop closed without
    disposal) the socket is closed for real, so the server frees the backend at once.
    """
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and is_asyncpg(driver):
        release_transport(transport_of(driver), driver, dbapi_connection)
        mark_aborted(driver)
        return
    if driver is not None and type(driver).__module__.startswith("psycopg"):
        pgconn = getattr(driver, "pgconn", None)
        if pgconn is not None and owner_pid == os.getpid():
            # libpq closes synchronously; in a child psycopg's own pid check skips PQfinish.
            pgconn.finish()
            return
    # Never collected means never finalized, and a driver's finalizer is exactly what must not run.
    keep_forever(dbapi_connection)
