"""Progress events: publish over Redis pub/sub (never failing the caller) and subscribe to them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import loopsafe.redis
from roadmap_app.config import Settings

__all__ = ("EventPublisher", "EventStream", "decode_event")


class EventPublisher:
    """Publishes a roadmap's progress events; a notification, so it never raises.

    After a failed publish (Redis down, timeout) it stops trying for `cooldown` seconds: the
    pipeline keeps its pace instead of waiting `event_timeout_s` for every one of hundreds of
    events while Redis is away.
    """

    def __init__(self, settings: Settings, *, cooldown: float = 2.0) -> None:
        self.settings = settings
        self.cooldown = cooldown
        self._quiet_until = 0.0
        self.published = 0
        self.dropped = 0

    async def emit(self, roadmap_id: uuid.UUID | str, type: str, **payload: Any) -> bool:
        """Publish one event; return whether Redis accepted it."""
        if time.monotonic() < self._quiet_until:
            self.dropped += 1
            return False
        event = {
            "type": type,
            "roadmap_id": str(roadmap_id),
            "at": dt.datetime.now(dt.timezone.utc).isoformat(),
            **payload,
        }
        try:
            ok = await loopsafe.redis.publish(
                self.settings.channel(roadmap_id),
                json.dumps(event, default=str),
                timeout=self.settings.event_timeout_s,
            )
        except Exception:  # publish promises not to raise; this keeps the promise if it breaks one
            ok = False
        if ok:
            self.published += 1
        else:
            self.dropped += 1
            self._quiet_until = time.monotonic() + self.cooldown
        return ok


def decode_event(message: Any) -> dict[str, Any] | None:
    """Turn whatever `loopsafe.redis.subscribe` yields into an event dict (None if it is not one)."""
    data: Any = getattr(message, "data", message)
    if isinstance(message, Mapping):
        data = message.get("data", message)
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            return None
    return dict(data) if isinstance(data, Mapping) and "type" in data else None


class EventStream:
    """A live subscription to one roadmap's events, known to be active once `open()` returns.

    `loopsafe.redis.subscribe` sends SUBSCRIBE on its first iteration, and a message published
    before that is lost. A late subscriber reads the current state from the database right after
    opening, so the subscription must already be active then, or an event published in between
    would fall in the gap: `open()` publishes a probe on the channel and waits to receive it.

    The subscription does not reconnect by itself: messages published while it is away are lost,
    so a lost connection ends it with a ``stream_lost`` event, and the reader catches up from the
    database before subscribing again.
    """

    def __init__(self, settings: Settings, roadmap_id: uuid.UUID | str) -> None:
        self.settings = settings
        self.roadmap_id = str(roadmap_id)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._probe = uuid.uuid4().hex
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            async for message in loopsafe.redis.subscribe(
                self.settings.channel(self.roadmap_id), reconnect_timeout=0
            ):
                event = decode_event(message)
                if event is None:
                    continue
                if event["type"] == "probe":
                    if event.get("nonce") == self._probe:
                        self._ready.set()
                    continue
                await self.queue.put(event)
        except Exception as exc:  # Redis went away: the caller falls back to the database
            await self.queue.put({"type": "stream_lost", "error": f"{type(exc).__name__}: {exc}"})

    async def open(self, *, timeout: float = 2.0) -> bool:
        """Subscribe; return whether the subscription is confirmed active within `timeout`."""
        self._task = asyncio.create_task(self._read(), name=f"events-{self.roadmap_id}")
        deadline = asyncio.get_running_loop().time() + timeout
        publisher = EventPublisher(self.settings)
        wait = 0.01
        while not self._ready.is_set() and not self._task.done():
            # SUBSCRIBE goes out when the reader task first runs; a probe published before that
            # is simply not seen, so probe again, waiting a little longer each time.
            await asyncio.sleep(wait)
            if not await publisher.emit(self.roadmap_id, "probe", nonce=self._probe):
                break  # Redis is not taking messages: no point waiting for our own
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            wait = min(wait * 2, 0.2)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), min(wait, remaining))
        return self._ready.is_set()

    async def next(self) -> dict[str, Any]:
        """The next event; ``stream_lost`` (the last one) once the subscription has ended."""
        return await self.queue.get()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
