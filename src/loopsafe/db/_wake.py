"""One thread per process and ledger Redis that hears which of its waiting tickets were granted.

The ledger's scripts PUBLISH the tickets they grant to waiters on ``WAKE_CHANNEL + <process
token>``; this thread listens on its process's channel and passes each ticket to the keeper that
asked (a ticket names its owner). It starts with the first keeper that waits, a forked child makes
its own (the token is per process), and it stops within `LISTEN` once its last keeper has left. A
message lost (not subscribed yet, Redis restarting) costs the waiter only its next safety ask.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from typing import Protocol

from redis import Redis as SyncRedis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from .._fork import on_fork_in_child
from ._ledger import WAKE_CHANNEL

__all__ = ("LISTEN", "WakeListener", "listener_for")

#: How long the thread waits for a message before checking whether anyone still listens.
LISTEN = 0.25
#: Longest a Redis call of the thread may take (connecting, subscribing).
TIMEOUT = 1.0


class Waiting(Protocol):
    """What a listener wakes: a keeper, by its owner id."""

    @property
    def owner(self) -> str: ...

    def granted(self, ticket: str) -> None: ...


class WakeListener:
    """This process's subscription to its wake-up channel on one Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.token = uuid.uuid4().hex
        self.channel = WAKE_CHANNEL + self.token
        self.pid = os.getpid()
        self._keepers: dict[str, Waiting] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def join(self, keeper: Waiting) -> None:
        """Deliver `keeper`'s grants from now on (starts the thread if it is not running)."""
        with self._lock:
            self._keepers[keeper.owner] = keeper
            if self._thread is None and os.getpid() == self.pid:
                self._thread = threading.Thread(
                    target=self._run, name="loopsafe.db ledger wake-ups", daemon=True
                )
                self._thread.start()

    def leave(self, keeper: Waiting) -> None:
        with self._lock:
            self._keepers.pop(keeper.owner, None)

    def _run(self) -> None:
        client = SyncRedis.from_url(
            self.url,
            socket_timeout=TIMEOUT + LISTEN,
            socket_connect_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub: PubSub | None = None
        try:
            while True:
                with self._lock:
                    if not self._keepers or os.getpid() != self.pid:
                        self._thread = None
                        return
                try:
                    if pubsub is None:
                        pubsub = client.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(self.channel)
                    message = pubsub.get_message(timeout=LISTEN)
                except Exception:  # Redis away: waiters ask on their own until it is back
                    _close(pubsub)
                    pubsub = None
                    time.sleep(LISTEN)
                    continue
                if message is not None and message["type"] == "message":
                    self._deliver(message["data"])
        finally:
            _close(pubsub)
            client.close()

    def _deliver(self, data: bytes) -> None:
        for ticket in data.decode().split():
            with self._lock:
                keeper = self._keepers.get(ticket.rpartition(":")[0])
            if keeper is not None:
                keeper.granted(ticket)


def _close(pubsub: PubSub | None) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            pubsub.close()


_listeners: dict[str, WakeListener] = {}
_listeners_lock = threading.Lock()


def listener_for(url: str) -> WakeListener:
    """This process's listener on the Redis at `url` (made on first use, not started)."""
    with _listeners_lock:
        listener = _listeners.get(url)
        if listener is None or listener.pid != os.getpid():
            listener = _listeners[url] = WakeListener(url)
        return listener


def _forget_after_fork() -> None:
    global _listeners_lock
    _listeners_lock = threading.Lock()
    _listeners.clear()


on_fork_in_child(_forget_after_fork)
