"""`publish`: a best-effort notification that reports failure as False and never breaks its caller."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import _validate
from .._log import get_logger
from ._client import loop_clients

__all__ = ("encode_message", "publish")

_log = get_logger("loopsafe.redis")
_INF = math.inf


class _Unpublishable(ValueError):
    """The arguments can never be published; the message says why."""


async def publish(
    channel: str, message: str | bytes | Mapping[str, Any], *, timeout: float = 5.0
) -> bool:
    """Publish `message` on `channel` through the running loop's client; True once Redis took it.

    `message` is sent as is (str, bytes) or as compact JSON (a mapping). True means the server
    accepted the message, not that anyone was subscribed. Never raises: on a bad message or
    argument, Redis down or refusing connections, a connection lost mid-way, or no answer within
    `timeout` seconds (also when the server accepts the connection but never replies) it returns
    False and logs a ``loopsafe.publish_failed`` warning with the reason. It is therefore safe in
    an ``except`` block of a failing task: a notification never turns into a second failure. The
    next call after Redis comes back succeeds; nothing needs restarting.

    Only cancellation of the calling task propagates (as `asyncio.CancelledError`), as it must.
    Since 0.1.0.
    """
    try:
        # Fast paths first: this runs once per notification, often in a tight loop.
        if type(message) is str or type(message) is bytes:
            payload: str | bytes = message
        else:
            payload = encode_message(message)
        # float literals: 3.11 specialises float-to-float comparisons only.
        if type(channel) is not str or type(timeout) is not float or not 0.0 < timeout < _INF:
            _check_arguments(channel, timeout)
        clients = loop_clients()
        await clients.deadlines.run(clients.client().publish(channel, payload), timeout)
    except Exception as exc:
        _log.warning(
            "loopsafe.publish_failed",
            channel=channel if isinstance(channel, str | bytes) else repr(channel),
            reason=_reason(exc, timeout),
            error="ValueError" if isinstance(exc, _Unpublishable) else type(exc).__name__,
        )
        return False
    return True


def encode_message(message: object) -> str | bytes:
    """What `publish` sends for `message`: str and bytes as they are, a mapping as compact JSON.

    Raises `ValueError` (with the reason) for anything else or a mapping JSON cannot represent.
    """
    if isinstance(message, str | bytes):
        return message
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    if isinstance(message, Mapping):
        try:
            # allow_nan=False: NaN/Infinity are not JSON; a browser's JSON.parse would reject them.
            return json.dumps(
                message,
                ensure_ascii=False,
                separators=(",", ":"),
                allow_nan=False,
                default=_json_default,
            )
        except (TypeError, ValueError, RecursionError) as exc:
            raise _Unpublishable(f"message is not JSON-serialisable: {exc}") from exc
    raise _Unpublishable(
        f"message must be str, bytes or a JSON-serialisable mapping, got {type(message).__name__}"
    )


def _json_default(value: object) -> object:
    # Nested mappings that are not dicts (MappingProxyType, custom Mapping classes) are still JSON.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _check_arguments(channel: object, timeout: object) -> None:
    if not isinstance(channel, str | bytes):
        raise _Unpublishable(f"channel must be str or bytes, got {type(channel).__name__}")
    try:
        _validate.seconds("timeout", timeout)
    except (TypeError, ValueError) as exc:
        raise _Unpublishable(str(exc)) from None


def _reason(exc: Exception, timeout: float) -> str:
    if isinstance(exc, _Unpublishable):
        return str(exc)
    if isinstance(exc, TimeoutError):  # ours (asyncio.timeout), not redis-py's socket timeout
        return (
            f"no answer from Redis within {timeout:g} s (server down, unreachable, overloaded "
            "or not speaking Redis)"
        )
    if isinstance(exc, RedisTimeoutError):
        return f"Redis timed out: {exc}"
    if isinstance(exc, RedisConnectionError):
        return f"cannot reach Redis: {exc}"
    return f"{type(exc).__name__}: {exc}"
