"""Run code in a real forked child and bring back what it saw, within a deadline."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ("CHILD_DEADLINE", "FORKS", "in_child", "libc_fork")

#: Seconds a forked child may take before it is killed and the test fails. A child forked while
#: another thread held a lock (logging's, the import lock) can deadlock; without a deadline it
#: held a whole suite run until someone killed it.
CHILD_DEADLINE = 30.0


def libc_fork() -> int:
    """fork() straight from libc: Python's os.register_at_fork hooks do not run.

    Without those hooks nothing resets the locks other threads held at fork time, so tests that
    use it are marked ``fresh_interpreter`` and run alone in a new interpreter, where the only
    threads are the test's own.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pid = int(libc.fork())
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


#: Both ways to fork, for ``@pytest.mark.parametrize("fork", FORKS)``; the hookless one runs in a
#: fresh interpreter (see `libc_fork`).
FORKS = [
    pytest.param(os.fork, id="os.fork"),
    pytest.param(libc_fork, id="fork-without-hooks", marks=pytest.mark.fresh_interpreter),
]


def in_child(
    body: Callable[[], dict[str, Any]],
    *,
    fork: Callable[[], int] = os.fork,
    deadline: float = CHILD_DEADLINE,
) -> dict[str, Any]:
    """Run `body` in a forked child and return the JSON-able dict it returned.

    The child never returns into pytest; an exception in it fails the calling test with its text.
    A child still running after `deadline` seconds is killed (SIGKILL) and the test fails.
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
    try:
        payload = _read_until_eof(read_fd, time.monotonic() + deadline)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(
            f"forked child {pid} did not finish within {deadline:g} s and was killed"
        ) from None
    finally:
        os.close(read_fd)
    # EOF: the child wrote its report and is exiting (or died); its exit cannot take long.
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, payload
    report: dict[str, Any] = json.loads(payload)
    assert "error" not in report, report["error"]
    return report


def _read_until_eof(fd: int, deadline: float) -> str:
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks).decode()
        chunks.append(chunk)
