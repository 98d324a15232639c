"""`subscribe`: pub/sub messages as an async iterator that cleans up and survives server restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import _validate
from .._bound import await_bounded
from .._errors import LoopsafeError
from .._log import get_logger
from ._client import loop_clients
from ._redis_compat import close_socket_now

__all__ = ("Message", "SubscriptionLostError", "subscribe")

_log = get_logger("loopsafe.redis")

#: What counts as "the connection is gone" (anything else propagates to the consumer).
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
_FIRST_RETRY_DELAY = 0.1
_MAX_RETRY_DELAY = 2.0
#: Leaving must not hang a cancelled task on a dead server: past this, the socket is just closed.
_LEAVE_TIMEOUT = 2.0


class SubscriptionLostError(LoopsafeError, RedisConnectionError):
    """A `subscribe` iterator lost its Redis connection and could not restore it in time.

    Also a `redis.exceptions.ConnectionError`. Messages published while it was disconnected were
    not received (Redis pub/sub keeps nothing for absent subscribers).

    .. versionadded:: 0.1.0
    """


@dataclass(frozen=True, slots=True)
class Message:
    """One pub/sub message, as `subscribe` yields it.

    ``channel``: the channel it was published on; ``data``: the payload as text (UTF-8, invalid
    bytes replaced); ``pattern``: the pattern that matched, for ``subscribe(..., pattern=True)``,
    else None; ``raw``: the payload bytes exactly as published.

    .. versionadded:: 0.1.0
    """

    channel: str
    data: str
    pattern: str | None = None
    raw: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        """The payload parsed as JSON (what `publish` sends for a mapping).

        Raises `json.JSONDecodeError` (a `ValueError`) if the payload is not JSON.
        """
        return json.loads(self.data)


async def subscribe(
    *channels: str, pattern: bool = False, reconnect_timeout: float = 30.0
) -> AsyncGenerator[Message, None]:
    """Yield the messages published on `channels` (glob patterns if `pattern`), as `Message`.

    Uses one connection of the running loop's client (`get_redis()`) for as long as you iterate.
    Leaving the ``async for`` — ``break``, an exception, cancellation, the loop ending — closes that
    connection, which ends the subscription on the server. ``break`` hands the iterator to the
    garbage collector and asyncio finishes it a moment later; for cleanup at a known point use
    ``async with contextlib.aclosing(subscribe(...)) as messages:``.

    If the connection drops (server restart, network cut), it reconnects and subscribes again,
    retrying with backoff; messages published in between are lost, as always with Redis pub/sub.
    If it cannot restore the subscription within `reconnect_timeout` seconds (0: do not try), the
    iteration ends with `SubscriptionLostError`. The subscription is active once the first
    ``__anext__`` has sent SUBSCRIBE; a message published before that is not seen.

    Raises `ValueError` (no channels, bad `reconnect_timeout`) or `TypeError` (a channel that is
    not a string) on the first iteration, and `NoRunningLoopError` outside a loop.

    .. versionadded:: 0.1.0
    """
    _check_arguments(channels, reconnect_timeout)
    holder = loop_clients()
    client = holder.client()
    loop = asyncio.get_running_loop()
    names = ", ".join(channels)
    lost_since: float | None = None
    delay = _FIRST_RETRY_DELAY
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        saved_retry: Retry | None = None
        error: BaseException
        try:
            try:
                if pattern:
                    await pubsub.psubscribe(*channels)
                else:
                    await pubsub.subscribe(*channels)
                saved_retry = _own_the_retries(pubsub)
                if lost_since is not None:
                    _log.info(
                        "loopsafe.subscription_restored",
                        channels=names,
                        down_for=round(loop.time() - lost_since, 3),
                    )
                    lost_since, delay = None, _FIRST_RETRY_DELAY
                while True:
                    raw = await pubsub.get_message(timeout=None)
                    if raw is not None and raw.get("type") in ("message", "pmessage"):
                        yield _to_message(raw)
            except _LOST as exc:
                error = exc
        finally:
            await _leave(pubsub, saved_retry)

        now = loop.time()
        if lost_since is None:
            lost_since = now
            _log.warning(
                "loopsafe.subscription_lost",
                channels=names,
                reason=f"{type(error).__name__}: {error}",
                reconnect_timeout=reconnect_timeout,
            )
        if holder.closed:
            raise SubscriptionLostError(
                f"The subscription to {names} ended because this loop's Redis client was closed "
                "(its event loop is shutting down). Subscribe from a loop that keeps running."
            ) from error
        remaining = lost_since + reconnect_timeout - now
        if remaining <= 0:
            raise SubscriptionLostError(
                f"Lost the Redis subscription to {names} and could not restore it within "
                f"{reconnect_timeout:g} s ({type(error).__name__}: {error}). Messages published "
                "meanwhile were not received; subscribe again once Redis is reachable."
            ) from error
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_RETRY_DELAY)


def _check_arguments(channels: tuple[object, ...], reconnect_timeout: object) -> None:
    if not channels:
        raise ValueError("subscribe() needs at least one channel (or pattern) name")
    for channel in channels:
        if not isinstance(channel, str):
            raise TypeError(f"channel names must be str, got {type(channel).__name__}: {channel!r}")
    _validate.seconds("reconnect_timeout", reconnect_timeout, allow_zero=True)


def _own_the_retries(pubsub: PubSub) -> Retry | None:
    """Stop redis-py from silently reconnecting inside `get_message`; return its retry policy.

    Its hidden retries (nested: each retry's reconnect retries too) make the outage window
    unpredictable and unlogged; our loop reconnects with its own deadline and log events instead.
    """
    connection = pubsub.connection
    if connection is None:
        return None
    saved: Retry = connection.retry
    connection.retry = Retry(NoBackoff(), 0)
    return saved


async def _leave(pubsub: PubSub, saved_retry: Retry | None) -> None:
    """Close the subscription's connection (the server drops the subscription) and release it."""
    connection = pubsub.connection
    if connection is not None and saved_retry is not None:
        # The connection goes back to the pool for ordinary commands: give it its policy back.
        connection.retry = saved_retry
    try:
        await await_bounded(pubsub.aclose(), _LEAVE_TIMEOUT)  # type: ignore[no-untyped-call, unused-ignore]
    except asyncio.CancelledError:
        _close_now(pubsub, connection)
        raise
    except Exception as exc:
        # The pool is stuck or the server misbehaves: the socket still has to go.
        _close_now(pubsub, connection)
        _log.debug("loopsafe.subscription_close_failed", error=f"{type(exc).__name__}: {exc}")


def _close_now(pubsub: PubSub, connection: AbstractConnection | None) -> None:
    """Close the subscription's socket without awaiting anything (no goodbye to the server)."""
    pubsub.connection = None
    if connection is not None:
        close_socket_now(connection)


def _to_message(raw: dict[str, Any]) -> Message:
    payload = raw.get("data")
    data_bytes = payload.encode() if isinstance(payload, str) else bytes(payload or b"")
    return Message(
        channel=_text(raw.get("channel")),
        data=data_bytes.decode("utf-8", "replace"),
        pattern=_text(raw["pattern"]) if raw.get("type") == "pmessage" else None,
        raw=data_bytes,
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
