"""Starting, watching and stopping the app's processes (uvicorn, Celery workers) as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = (
    "ManagedProcess",
    "api_command",
    "free_port",
    "port_is_free",
    "wait_for_http",
    "worker_command",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def worker_command(
    queues: Sequence[str], *, concurrency: int, name: str | None = None, beat: bool = False
) -> list[str]:
    """`python -m roadmap_app worker` for `queues`, with the prefork pool."""
    command = [
        sys.executable, "-m", "roadmap_app", "worker",
        "--queues", ",".join(queues), "--concurrency", str(concurrency),
    ]  # fmt: skip
    if name:
        command += ["--name", name]
    if beat:
        command.append("--beat")
    return command


def api_command(*, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "roadmap_app", "api", "--host", host, "--port", str(port)]


class ManagedProcess:
    """A subprocess in its own process group (so a worker's prefork children go with it), its
    output in a log file (or, with ``log_path=None``, on this process's own output)."""

    def __init__(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str], log_path: Path | None
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[Any] | None = None

    def start(self) -> ManagedProcess:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, text: str, *, timeout: float) -> None:
        """Block until `text` appears in the process's output; raise with its log if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if not self.alive:
                break
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} did not log {text!r} within {timeout:g} s "
            f"({'running' if self.alive else 'exited'}). Last lines:\n{self.tail()}"
        )

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, nothing gets to clean up."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_log()

    def terminate(self) -> None:
        """SIGTERM the group without waiting: to stop several processes at once, then `stop`."""
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGTERM)

    def stop(self, *, timeout: float = 15.0) -> int | None:
        """SIGTERM (Celery's warm shutdown, uvicorn's graceful one), then SIGKILL after `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=10)
        # Prefork children outlive a parent killed early; the group signal reaches them too.
        self._signal_group(signal.SIGKILL)
        self._close_log()
        return self.process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_for_http(
    url: str, *, timeout: float, process: ManagedProcess | None = None
) -> httpx.Response:
    """Poll `url` until it answers 200; raise with the process's log if it never does."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if process is not None and not process.alive:
            break
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    log = f"\n{process.name} log:\n{process.tail()}" if process is not None else ""
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s ({last}){log}")
