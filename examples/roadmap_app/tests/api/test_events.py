"""The event stream on a real uvicorn server: one database read per stream while Redis is up,
polling only while it is away, and a bound on the streams one process serves."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import uvicorn
from roadmap_testkit import query, wait_for

import loopsafe.db
from loopsafe.testing import EmbeddedRedis
from roadmap_app import repositories
from roadmap_app.api.routes import roadmaps
from roadmap_app.config import Settings
from roadmap_app.demo import iter_sse
from roadmap_app.events import EventPublisher
from roadmap_app.main import create_app
from roadmap_app.models import RoadmapStatus
from roadmap_app.processes import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The app on a real uvicorn server in a thread of its own (its own event loop); its URL."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
        )
    )
    thread = threading.Thread(target=server.run, name="events-test-api", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), timeout=20, what="uvicorn")
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


class Listener:
    """Reads one roadmap's event stream in a task; `close()` drops the connection at once."""

    def __init__(self, base_url: str, roadmap_id: uuid.UUID) -> None:
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.status_code: int | None = None
        self._task = asyncio.create_task(
            self._read(base_url, f"/api/v1/roadmaps/{roadmap_id}/events")
        )

    async def _read(self, base_url: str, path: str) -> None:
        try:
            async with (
                httpx.AsyncClient(base_url=base_url, timeout=60.0) as client,
                client.stream("GET", path) as response,
            ):
                self.status_code = response.status_code
                block: list[str] = []
                async for line in response.aiter_lines():
                    block.append(line)
                    if line == "":
                        for event in iter_sse(block):
                            self.events.put_nowait(event)
                        block = []
        finally:
            self.events.put_nowait(None)  # the end of the stream

    async def next(self, timeout: float = 20.0) -> dict[str, Any] | None:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """Every database read of an event stream (its `snapshot`), as the roadmap ids read."""
    reads: list[uuid.UUID] = []
    original = roadmaps.snapshot

    async def counting(roadmap_id: uuid.UUID) -> dict[str, Any]:
        reads.append(roadmap_id)
        return await original(roadmap_id)

    monkeypatch.setattr(roadmaps, "snapshot", counting)
    return reads


async def _generating_roadmap() -> uuid.UUID:
    """A roadmap in `generating_content` that no worker generates: only the test moves it."""
    async with loopsafe.db.session() as session:
        roadmap = await repositories.create_roadmap(
            session, goal="Learn Forth", level="beginner", weekly_hours=3, review=False
        )
        roadmap.status = RoadmapStatus.generating_content
        return roadmap.id


async def test_while_redis_is_up_a_stream_reads_the_database_once_then_only_redis(
    configured: Settings, snapshots: list[uuid.UUID]
) -> None:
    roadmap_id = await _generating_roadmap()
    publisher = EventPublisher(configured, cooldown=0)
    with serving(configured) as url:
        listener = Listener(url, roadmap_id)
        try:
            first = await listener.next()
            assert first is not None
            assert (first["type"], first["status"]) == ("snapshot", "generating_content")
            await asyncio.sleep(3.5)  # the old stream read the database every second meanwhile
            assert await publisher.emit(roadmap_id, "concept_step", concept_id=1, step="quiz")
            step = await listener.next()
            assert step is not None
            assert (step["type"], step["step"]) == ("concept_step", "quiz")
            assert await publisher.emit(roadmap_id, "status", status="completed", error=None)
            last = await listener.next()
            assert last is not None
            assert (last["type"], last["status"]) == ("status", "completed")
            assert await listener.next() is None  # the stream ends with the final status
        finally:
            await listener.close()
    assert snapshots == [roadmap_id]


async def _pushed(publisher: EventPublisher, listener: Listener, roadmap_id: uuid.UUID) -> bool:
    """Whether an event published now reaches the stream within half a second."""
    if not await publisher.emit(roadmap_id, "concept_step", concept_id=1, step="quiz"):
        await asyncio.sleep(0.2)
        return False
    with contextlib.suppress(asyncio.TimeoutError):
        while (event := await listener.next(timeout=0.5)) is not None:
            if event["type"] == "concept_step":
                return True
    return False


async def test_without_redis_a_stream_polls_the_database_and_returns_to_redis_when_it_is_back(
    configured: Settings, database_url: str, snapshots: list[uuid.UUID]
) -> None:
    with EmbeddedRedis() as redis:
        private = replace(configured, redis_url=redis.url, broker_url=redis.url)
        roadmap_id = await _generating_roadmap()
        with serving(private) as url:  # configures loopsafe.redis for this test too
            publisher = EventPublisher(private, cooldown=0)
            listener = Listener(url, roadmap_id)
            try:
                assert await listener.next() is not None
                assert len(snapshots) == 1

                redis.stop()
                # Polling: a change in the database reaches the stream without any event.
                query(
                    database_url,
                    "UPDATE roadmaps SET curriculum_version = 7 WHERE id = %(i)s RETURNING id",
                    {"i": roadmap_id},
                )
                polled = await listener.next()
                assert polled is not None
                assert (polled["type"], polled["curriculum_version"]) == ("snapshot", 7)
                polls = len(snapshots)
                await asyncio.sleep(2.5)
                assert len(snapshots) >= polls + 2  # about once a second

                redis.start()
                # Events are lost until the stream has subscribed again (every 5 s).
                deadline = time.monotonic() + 20
                while not await _pushed(publisher, listener, roadmap_id):
                    assert time.monotonic() < deadline, "the stream did not subscribe again"
                back = len(snapshots)
                await asyncio.sleep(2.5)
                assert len(snapshots) == back  # push again: no more polling
            finally:
                await listener.close()


async def test_a_redis_restart_between_two_events_does_not_hide_what_changed_meanwhile(
    configured: Settings, database_url: str
) -> None:
    """Events published while the subscription is down are lost; a stream that quietly
    reconnected would never show them (it no longer polls), so a drop always means catching up
    from the database."""
    with EmbeddedRedis() as redis:
        private = replace(configured, redis_url=redis.url, broker_url=redis.url)
        roadmap_id = await _generating_roadmap()
        with serving(private) as url:
            listener = Listener(url, roadmap_id)
            try:
                assert await listener.next() is not None
                redis.kill()
                query(
                    database_url,
                    "UPDATE roadmaps SET curriculum_version = 3 WHERE id = %(i)s RETURNING id",
                    {"i": roadmap_id},
                )
                redis.start()  # back at once: the change's event was never published
                caught_up = await listener.next(timeout=10)
                assert caught_up is not None
                assert (caught_up["type"], caught_up["curriculum_version"]) == ("snapshot", 3)
            finally:
                await listener.close()


async def _open(url: str, roadmap_id: uuid.UUID) -> Listener | None:
    """A stream that opened (its snapshot arrived), or None if it was refused."""
    listener = Listener(url, roadmap_id)
    first = await listener.next()
    if first is not None and first["type"] == "snapshot" and listener.status_code == 200:
        return listener
    await listener.close()
    return None


async def test_streams_beyond_sse_max_subscribers_are_refused_with_503_and_retry_after(
    configured: Settings,
) -> None:
    roadmap_id = await _generating_roadmap()
    with serving(replace(configured, sse_max_subscribers=2)) as url:
        listeners = [await _open(url, roadmap_id) for _ in range(2)]
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                refused = await client.get(f"/api/v1/roadmaps/{roadmap_id}/events")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            assert refused.json()["detail"] == (
                "this API process already serves 2 event streams (SSE_MAX_SUBSCRIBERS); "
                "retry in 5 s"
            )
            # A closed stream gives its place back (once the server has seen the disconnect).
            closing = listeners.pop()
            assert closing is not None
            await closing.close()
            deadline = time.monotonic() + 10
            while (reopened := await _open(url, roadmap_id)) is None:
                assert time.monotonic() < deadline, "the closed stream kept its place"
                await asyncio.sleep(0.1)
            listeners.append(reopened)
        finally:
            for listener in listeners:
                if listener is not None:
                    await listener.close()


async def test_a_missing_roadmap_gives_its_stream_place_back(configured: Settings) -> None:
    roadmap_id = await _generating_roadmap()
    with serving(replace(configured, sse_max_subscribers=1)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(3):
                missing = await client.get(f"/api/v1/roadmaps/{uuid.uuid4()}/events")
                assert missing.status_code == 404
        listener = await _open(url, roadmap_id)
        assert listener is not None
        await listener.close()
