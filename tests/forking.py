"""Run code in a real forked child and bring back what it saw."""

from __future__ import annotations

import ctypes
import json
import os
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ("in_child", "libc_fork")


def libc_fork() -> int:
    """fork() straight from libc: Python's os.register_at_fork hooks do not run."""
    libc = ctypes.CDLL(None, use_errno=True)
    pid = int(libc.fork())
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


def in_child(
    body: Callable[[], dict[str, Any]], *, fork: Callable[[], int] = os.fork
) -> dict[str, Any]:
    """Run `body` in a forked child and return the JSON-able dict it returned.

    The child never returns into pytest; an exception in it fails the calling test with its text.
    """
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads; these tests mean to.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            try:
                outcome = body()
            except BaseException as exc:
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_fd, json.dumps(outcome).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as reader:
        payload = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, payload
    report: dict[str, Any] = json.loads(payload)
    assert "error" not in report, report["error"]
    return report
