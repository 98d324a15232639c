"""publish(): delivers str/bytes/JSON, and on any trouble returns False with a reason, never raising."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import pytest
import redis

import loopsafe
from loopsafe.redis import Message, configure, get_redis, publish, subscribe
from loopsafe.testing import EmbeddedRedis, free_port

from .conftest import SilentServer, async_wait_until, observe, subscribers

pytestmark = pytest.mark.redis


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The reasons of the ``loopsafe.publish_failed`` warnings logged so far."""
    return [
        record.loopsafe_fields["reason"]  # type: ignore[attr-defined]
        for record in caplog.records
        if getattr(record, "loopsafe_event", None) == "loopsafe.publish_failed"
        and record.levelno == logging.WARNING
    ]


@contextlib.asynccontextmanager
async def listening(channel: str, into: list[Message]) -> AsyncIterator[None]:
    """Collect `channel`'s messages into `into` while the block runs (subscribed on entry)."""

    async def consume() -> None:
        async with contextlib.aclosing(subscribe(channel)) as messages:
            async for message in messages:
                into.append(message)

    task = asyncio.create_task(consume())
    client = get_redis()

    async def subscribed() -> bool:
        return int((await client.pubsub_numsub(channel))[0][1]) > 0

    try:
        for _ in range(500):
            if await subscribed():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"the subscription to {channel} never appeared within 5 s")
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.both_loops
async def test_str_bytes_and_mappings_are_delivered(configured: str, channel: str) -> None:
    received: list[Message] = []
    async with listening(channel, received):
        assert await publish(channel, "plain text") is True
        assert await publish(channel, b"\x00raw\xff") is True
        assert await publish(channel, {"step": 2, "nested": MappingProxyType({"ok": True})})
        await async_wait_until(lambda: len(received) == 3, what="three messages")
    assert received[0] == Message(channel=channel, data="plain text", raw=b"plain text")
    assert received[1].raw == b"\x00raw\xff"
    assert received[2].json() == {"step": 2, "nested": {"ok": True}}
    assert received[2].data == '{"step":2,"nested":{"ok":true}}'


async def test_true_means_accepted_even_without_subscribers(configured: str, channel: str) -> None:
    assert await publish(channel, "nobody listens") is True


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"when": {1, 2}}, "not JSON-serialisable: Object of type set"),
        ({"x": float("nan")}, "not JSON-serialisable: Out of range float"),
        (["a", "list"], "must be str, bytes or a JSON-serialisable mapping, got list"),
        (42, "must be str, bytes or a JSON-serialisable mapping, got int"),
    ],
)
async def test_a_message_that_cannot_be_sent_returns_false_with_the_reason(
    configured: str, channel: str, caplog: pytest.LogCaptureFixture, message: Any, reason: str
) -> None:
    assert await publish(channel, message) is False
    assert len(failures(caplog)) == 1
    assert reason in failures(caplog)[0]


@pytest.mark.parametrize(
    ("channel_name", "timeout", "reason"),
    [
        (None, 5.0, "channel must be str or bytes, got NoneType"),
        ("ok", 0, "timeout must be a finite number of seconds > 0, got 0"),
        ("ok", float("nan"), "timeout must be a finite number of seconds > 0, got nan"),
        ("ok", "5", "timeout must be a number of seconds, got '5' (str)"),
        ("ok", True, "timeout must be a number of seconds, got True (bool)"),
        ("ok", float("inf"), "timeout must be a finite number of seconds > 0, got inf"),
    ],
)
async def test_bad_arguments_return_false_with_the_reason(
    configured: str,
    caplog: pytest.LogCaptureFixture,
    channel_name: Any,
    timeout: Any,
    reason: str,
) -> None:
    assert await publish(channel_name, "x", timeout=timeout) is False
    assert failures(caplog) == [reason]


async def test_connection_refused_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nobody listens there
    configure(f"redis://127.0.0.1:{port}/0")
    assert await publish("anything", "x", timeout=5.0) is False
    [reason] = failures(caplog)
    assert f"cannot reach Redis: Error 111 connecting to 127.0.0.1:{port}" in reason


async def test_a_server_that_accepts_but_never_answers_is_given_up_after_the_timeout(
    silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    configure(silent_server.url)
    # Hang guard: publish must come back by itself shortly after its own timeout.
    async with asyncio.timeout(0.5 + 2.0):
        assert await publish("anything", "x", timeout=0.5) is False
    assert failures(caplog) == [
        "no answer from Redis within 0.5 s (server down, unreachable, overloaded or not speaking "
        "Redis)"
    ]
    assert silent_server.accepted >= 1
    # The half-open connection was thrown away, not put back into the pool for the next caller.
    await async_wait_until(
        lambda: silent_server.open_connections() == 0, what="the client to hang up"
    )


async def test_cancelling_the_caller_propagates_and_discards_the_connection(
    silent_server: SilentServer,
) -> None:
    # No socket timeout of redis-py's own (5 s from 8.0 on): on a loaded machine it could end the
    # read before the cancellation arrives, and this test is about the cancellation.
    configure(silent_server.url, socket_timeout=None)
    task = asyncio.create_task(publish("anything", "x", timeout=30))
    await async_wait_until(lambda: silent_server.accepted >= 1, what="a connection")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await async_wait_until(
        lambda: silent_server.open_connections() == 0, what="the client to hang up"
    )


async def test_an_outer_timeout_still_applies(silent_server: SilentServer) -> None:
    configure(silent_server.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await publish("anything", "x", timeout=30)


async def test_a_timed_out_publish_leaves_no_stale_reply_behind(
    private_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    configure(private_redis.url)
    client = get_redis()
    assert await publish("warm-up", "x") is True  # a pooled connection now exists
    admin = observe(private_redis)
    try:
        admin.client_pause(700, all=True)
        assert await publish("paused", "x", timeout=0.2) is False
        assert "no answer from Redis within 0.2 s" in failures(caplog)[0]
        # Once the pause ends, the connection that timed out must not hand its late reply to
        # the next command: ECHO must answer ECHO.
        for _ in range(100):
            if await publish("after", "x", timeout=1.0):
                break
        assert await client.echo("mine") == b"mine"
    finally:
        admin.close()


async def test_server_down_then_back_needs_no_restart(
    private_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    configure(private_redis.url)
    assert await publish("ch", "before") is True
    await asyncio.to_thread(private_redis.stop)
    assert await publish("ch", "while down", timeout=2.0) is False
    assert "cannot reach Redis" in failures(caplog)[0]
    await asyncio.to_thread(private_redis.start)
    assert await publish("ch", "after") is True


async def test_a_server_killed_mid_stream_never_raises(private_redis: EmbeddedRedis) -> None:
    configure(private_redis.url)
    results: list[bool] = []
    stop = asyncio.Event()

    async def keep_publishing(worker: int) -> None:
        while not stop.is_set():
            results.append(await publish("stream", {"worker": worker}, timeout=1.0))
            await asyncio.sleep(0)

    workers = [asyncio.create_task(keep_publishing(n)) for n in range(4)]
    await async_wait_until(lambda: len(results) >= 200, what="a steady stream")
    await asyncio.to_thread(private_redis.kill)
    count = len(results)
    await async_wait_until(lambda: len(results) >= count + 8, what="publishes after the kill")
    stop.set()
    await asyncio.gather(*workers)  # none of them raised
    assert results[0] is True
    assert results[-1] is False
    await asyncio.to_thread(private_redis.start)
    assert await publish("stream", "back") is True


async def test_publish_in_an_except_block_keeps_the_original_error(
    silent_server: SilentServer,
) -> None:
    """The incident behind issue 4: a failing task's notification must not replace its error."""
    configure(silent_server.url)

    async def task_body() -> None:
        try:
            raise KeyError("the real failure")
        except KeyError:
            await publish("task-events", {"status": "failed"}, timeout=0.2)
            assert sys.exc_info()[0] is KeyError
            raise

    with pytest.raises(KeyError, match="the real failure") as caught:
        await task_body()
    assert caught.value.__context__ is None


def _clients_created() -> int:
    [row] = [row for row in loopsafe.stats() if row["name"] == "loopsafe.redis"]
    return int(row["created"])


def test_eight_threads_publish_two_hundred_each_with_one_client_per_loop(
    configured: str, channel: str, observer: redis.Redis
) -> None:
    received: list[Message] = []
    ready = threading.Event()
    done = threading.Event()

    async def listen() -> None:
        async with contextlib.aclosing(subscribe(channel)) as messages:
            async for message in messages:
                if not ready.is_set():
                    continue  # the probe below
                received.append(message)
                if len(received) == 8 * 200:
                    break
        done.set()

    async def probe_then_listen() -> None:
        task = asyncio.create_task(listen())
        client = get_redis()

        async def subscribed() -> bool:
            return int((await client.pubsub_numsub(channel))[0][1]) > 0

        for _ in range(1000):
            if await subscribed():
                break
            await asyncio.sleep(0.01)
        else:
            task.cancel()
            raise AssertionError(f"the subscription to {channel} never appeared within 10 s")
        ready.set()
        async with asyncio.timeout(60):
            await task

    listener = threading.Thread(target=asyncio.run, args=(probe_then_listen(),))
    listener.start()
    assert ready.wait(timeout=30)
    assert subscribers(observer, channel) == 1

    barrier = threading.Barrier(8)
    outcomes: dict[int, tuple[list[bool], set[int]]] = {}

    async def publisher(worker: int) -> None:
        barrier.wait(timeout=30)
        results, clients = [], set()
        for n in range(200):
            results.append(await publish(channel, {"worker": worker, "n": n}))
            clients.add(id(get_redis()))
        outcomes[worker] = (results, clients)

    created_before = _clients_created()

    threads = [threading.Thread(target=asyncio.run, args=(publisher(w),)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    listener.join(timeout=60)
    assert done.is_set()
    assert sorted(outcomes) == list(range(8))
    assert all(all(results) and len(results) == 200 for results, _ in outcomes.values())
    # One client per loop: each thread kept one, and exactly eight were made for eight loops.
    assert all(len(clients) == 1 for _, clients in outcomes.values())
    assert _clients_created() - created_before == 8
    assert len(received) == 1600
    per_worker = {w: [m.json()["n"] for m in received if m.json()["worker"] == w] for w in range(8)}
    assert all(ns == list(range(200)) for ns in per_worker.values())  # in order, none lost
