"""`result`: await a Celery task's outcome without blocking the event loop.

Redis result backend: Celery's worker stores the outcome under ``celery-task-meta-<id>`` and
publishes the same payload on a channel of that name. Each event loop keeps one pub/sub connection
per backend URL (a `LoopLocal`) that every waiter of that loop shares: 500 waiters are one
connection, not 500. A waiter subscribes first and reads the stored key second, so an outcome
stored between the two is never missed; leaving (done, timed out or cancelled) unsubscribes once
its channel has no waiter left.

Any other backend: ``get_task_meta`` in a worker thread, polled with a growing interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .._asyncio_compat import cancellation_kept, settled_within
from .._errors import ResultTimeoutError
from .._log import get_logger
from .._registry import LoopLocal

__all__ = ("POLL_INTERVALS", "result")

_log = get_logger("loopsafe.celery")

#: Poll fallback: first interval, growth factor and ceiling, in seconds.
POLL_INTERVALS = (0.01, 2.0, 1.0)
#: A waiter re-reads the stored outcome this often even without a notification, a safety net
#: only: after a lost connection every waiter re-reads once its channel is subscribed again (the
#: confirmation of the restored subscription). Long, because the waiters that joined together
#: re-read together: 500 GETs every few seconds delayed the wake-ups of the other waiters.
_RECHECK_INTERVAL = 30.0
#: Connections for the stored-outcome reads of one loop (the pub/sub connection is separate).
_READ_CONNECTIONS = 4
#: How long a new waiter waits for the server to confirm its SUBSCRIBE before reading the key.
_CONFIRM_TIMEOUT = 2.0
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class _Hub:
    """One loop's pub/sub connection to one Redis result backend, shared by all its waiters."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            url, max_connections=_READ_CONNECTIONS, client_name="loopsafe-celery-results"
        )
        self.client = Redis.from_pool(pool)  # owns the pool: aclose() disconnects it
        self.pubsub = self.client.pubsub()
        self.waiters: dict[bytes, set[asyncio.Future[bytes | None]]] = {}
        self.confirmations: dict[bytes, asyncio.Future[None]] = {}
        self.reader: asyncio.Task[None] | None = None
        # SUBSCRIBE/UNSUBSCRIBE of concurrent waiters go out one at a time, in order.
        self.lock = asyncio.Lock()

    async def join(self, channel: bytes) -> asyncio.Future[bytes | None]:
        """Register a waiter on `channel` (subscribing if it is the first); returns its future."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        waiters = self.waiters.setdefault(channel, set())
        waiters.add(future)
        if len(waiters) == 1:
            loop = asyncio.get_running_loop()
            confirmed = self.confirmations.setdefault(channel, loop.create_future())
            try:
                async with self.lock:
                    await cancellation_kept(self.pubsub.subscribe(channel))
                if self.reader is None or self.reader.done():
                    self.reader = asyncio.create_task(self._read(), name="loopsafe-celery-results")
                # The caller reads the stored outcome next, on another connection: only once the
                # server confirmed the subscription is an outcome stored after that read certain
                # to be published to us. (A lost confirmation is covered by the periodic re-read.)
                await settled_within(confirmed, _CONFIRM_TIMEOUT)
            except BaseException:
                await self.leave(channel, future)
                raise
            finally:
                if self.confirmations.get(channel) is confirmed:
                    del self.confirmations[channel]
        elif (
            channel in self.confirmations
        ):  # joined while the first waiter's SUBSCRIBE is in flight
            await settled_within(self.confirmations[channel], _CONFIRM_TIMEOUT)
        return future

    def renew(
        self, channel: bytes, future: asyncio.Future[bytes | None]
    ) -> asyncio.Future[bytes | None]:
        """Swap a waiter's settled future for a fresh one on the same subscription."""
        fresh: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        waiters = self.waiters.setdefault(channel, set())
        waiters.discard(future)
        waiters.add(fresh)
        return fresh

    async def leave(self, channel: bytes, future: asyncio.Future[bytes | None]) -> None:
        waiters = self.waiters.get(channel)
        if waiters is None:
            return
        waiters.discard(future)
        if waiters:
            return
        del self.waiters[channel]
        if self.pubsub.connection is None:
            return
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            async with self.lock:
                if channel not in self.waiters:  # nobody re-joined meanwhile
                    await cancellation_kept(self.pubsub.unsubscribe(channel))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # A broken connection holds no subscription; forget the channel so that restoring
            # the connection does not subscribe it again.
            for key in (channel, channel.decode(errors="replace")):  # bytes, or str if decoding
                self.pubsub.channels.pop(key, None)
            _log.debug("loopsafe.celery_result_unsubscribe_failed", error=repr(exc))

    def _release_joiners(self) -> None:
        # A waiter joining while the connection is down reads the key at once (and retries it),
        # instead of waiting out _CONFIRM_TIMEOUT for a confirmation that cannot come.
        for confirmed in self.confirmations.values():
            if not confirmed.done():
                confirmed.set_result(None)

    def _wake(self, channel: bytes) -> None:
        for future in self.waiters.get(channel, ()):
            if not future.done():
                future.set_result(None)  # "re-read the stored outcome"

    async def _read(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        delay = 0.05
        while self.waiters or self.pubsub.subscribed:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # The next get_message reconnects and re-subscribes every channel; what was
                # published meanwhile is lost: each channel's waiters re-read their key when its
                # re-subscription is confirmed (below), when no outcome can slip between the two.
                _log.warning("loopsafe.celery_result_connection_lost", error=repr(exc))
                self._release_joiners()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            if message is None:
                continue
            if message["type"] == "subscribe":
                confirmed = self.confirmations.get(message["channel"])
                if confirmed is None or confirmed.done():
                    # A restored subscription (or a first one confirmed after its joiner stopped
                    # waiting for it): its waiters may have missed the outcome.
                    self._wake(message["channel"])
                else:
                    confirmed.set_result(None)
                continue
            if message["type"] != "message":
                continue
            for future in self.waiters.get(message["channel"], ()):
                if not future.done():
                    future.set_result(message["data"])

    async def aclose(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        await self.pubsub.aclose()
        await self.client.aclose()

    def drop(self) -> None:
        """Let go of the sockets without a byte sent (a forked child, a loop closed early)."""
        from .._release import release_transport
        from ..redis._redis_compat import detach_streams
        from ..redis._release import release_without_io

        if self.reader is not None:
            # On a loop that is already closed, cancelling cannot schedule anything: nothing to do.
            with contextlib.suppress(RuntimeError):
                self.reader.cancel()
        connection = self.pubsub.connection
        self.pubsub.connection = None
        if connection is not None:
            reader, writer = detach_streams(connection)
            if writer is not None:
                release_transport(writer.transport, reader, writer)
        release_without_io(self.client)


async def _aclose_hubs(hubs: dict[str, _Hub]) -> None:
    for hub in list(hubs.values()):
        await hub.aclose()
    hubs.clear()


def _drop_hubs(hubs: dict[str, _Hub]) -> None:
    for hub in hubs.values():
        hub.drop()
    hubs.clear()


_hubs: LoopLocal[dict[str, _Hub]] = LoopLocal(
    dict, aclose=_aclose_hubs, drop=_drop_hubs, name="loopsafe.celery.result_hubs"
)


def _redis_url(backend: Any) -> str | None:
    """The backend's Redis URL if it is Celery's plain Redis backend (not Sentinel), else None."""
    from celery.backends.redis import RedisBackend, SentinelBackend

    if not isinstance(backend, RedisBackend) or isinstance(backend, SentinelBackend):
        return None
    url = backend.url or backend.app.conf.result_backend
    if isinstance(url, str) and url.startswith(_REDIS_SCHEMES):
        return url
    return None


def _outcome(async_result: Any, meta: dict[str, Any]) -> Any:
    """The task's return value, or its exception raised, as ``AsyncResult.get()`` would."""
    from celery import states

    state = meta["status"]
    value = meta["result"]
    if state in states.PROPAGATE_STATES:
        if isinstance(value, BaseException):
            raise value
        raise async_result.backend.exception_to_python(value)
    return value


async def _wait_notified(async_result: Any, url: str, deadline: float) -> dict[str, Any]:
    from celery import states

    backend = async_result.backend
    key: bytes = backend.get_key_for_task(async_result.id)
    if isinstance(key, str):
        key = key.encode()
    hubs = _hubs.get()
    hub = hubs.get(url)
    if hub is None:
        hub = hubs[url] = _Hub(url)
    loop = asyncio.get_running_loop()
    future = await hub.join(key)
    try:
        while True:
            payload: bytes | None = await _read_key(hub, key, deadline)
            if payload is not None:
                meta: dict[str, Any] = backend.meta_from_decoded(backend.decode_result(payload))
                if meta["status"] in states.READY_STATES:
                    return meta
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            # A notification carries the outcome itself; None means "re-read the key".
            if not await settled_within(future, min(remaining, _RECHECK_INTERVAL)):
                continue
            notified = future.result()
            if notified is not None:
                meta = backend.meta_from_decoded(backend.decode_result(notified))
                if meta["status"] in states.READY_STATES:
                    return meta
            # Not final yet (STARTED, RETRY) or a reconnect: wait again on a fresh future. The
            # subscription stays (after a reconnect redis-py restores it), so no I/O here.
            future = hub.renew(key, future)
    finally:
        await hub.leave(key, future)


async def _read_key(hub: _Hub, key: bytes, deadline: float) -> bytes | None:
    """GET the stored outcome; while Redis is unreachable, retry until the deadline."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    loop = asyncio.get_running_loop()
    delay = 0.05
    while True:
        try:
            value: Any = await cancellation_kept(hub.client.get(key))
            return cast("bytes | None", value)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if loop.time() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def _wait_polling(
    async_result: Any, deadline: float, fetch: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    from celery import states

    loop = asyncio.get_running_loop()
    first, factor, ceiling = POLL_INTERVALS
    interval = first
    while True:
        meta = await fetch()
        if meta["status"] in states.READY_STATES:
            return meta
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * factor, ceiling)


async def result(async_result: Any, *, timeout: float | None = None) -> Any:
    """Wait for a Celery task to finish and return its value, without blocking the event loop.

    `async_result` is the ``AsyncResult`` that `loopsafe.celery.send` (or ``apply_async``)
    returned. On Celery's Redis result backend the wait is a pub/sub notification: one shared
    connection per loop and backend, whatever the number of waiters, and no polling. Other
    backends are polled from a worker thread, every 10 ms at first, the interval doubling up to
    1 s (`POLL_INTERVALS`).

    A task that failed raises its exception here, as ``AsyncResult.get()`` does. Cancelling the
    awaiting coroutine drops its subscription.

    Raises `ResultTimeoutError` when `timeout` seconds pass first (``None``: wait forever),
    `ValueError` for a negative or NaN timeout or an app without a result backend, `TypeError`
    for something that is not an ``AsyncResult``.

    .. versionadded:: 0.1.0
    """
    from celery.backends.base import DisabledBackend
    from celery.result import AsyncResult

    if not isinstance(async_result, AsyncResult):
        raise TypeError(
            f"loopsafe.celery.result() takes a Celery AsyncResult (what send() returns), got "
            f"{async_result!r}"
        )
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        if math.isnan(timeout) or timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    backend = async_result.backend
    if isinstance(backend, DisabledBackend):
        raise ValueError(
            f"Celery app {async_result.app.main!r} has no result backend, so task "
            f"{async_result.id} cannot be waited for: set result_backend (for example "
            "'redis://…') on the app."
        )
    loop = asyncio.get_running_loop()
    deadline = math.inf if timeout is None else loop.time() + timeout
    url = _redis_url(backend)
    try:
        if url is not None:
            meta = await _wait_notified(async_result, url, deadline)
        else:

            async def fetch() -> dict[str, Any]:
                meta: dict[str, Any] = await asyncio.to_thread(
                    backend.get_task_meta, async_result.id
                )
                return meta

            meta = await _wait_polling(async_result, deadline, fetch)
    except TimeoutError as exc:
        raise ResultTimeoutError(
            f"Celery task {async_result.id} did not finish within {timeout:g} s; it may still "
            "be queued or running. Wait again with a longer timeout, or revoke it."
        ) from exc
    return _outcome(async_result, meta)
