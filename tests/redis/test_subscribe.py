"""subscribe(): decoded messages; leaving in any way releases the connection; restarts survived."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from loopsafe.redis import Message, SubscriptionLostError, configure, publish, subscribe
from loopsafe.testing import EmbeddedRedis

from .conftest import async_wait_until, observe, subscribed_clients, subscribers, wait_until

pytestmark = pytest.mark.redis


@pytest.fixture
def server(private_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """loopsafe.redis on a private server, plus a synchronous observer of that server."""
    configure(private_redis.url)
    client = observe(private_redis)
    yield client
    client.close()


async def publish_until_subscribed(observer: redis.Redis, channel: str, message: str) -> None:
    """Wait for a subscriber on `channel` (pub/sub drops messages sent before), then publish."""
    await async_wait_until(lambda: subscribers(observer, channel) > 0, what="a subscriber")
    assert await publish(channel, message) is True


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(record, "loopsafe_event", "") for record in caplog.records]


@pytest.mark.both_loops
async def test_break_unsubscribes_and_releases_the_connection(server: redis.Redis) -> None:
    async def first_message() -> Message:
        async for message in subscribe("news"):
            return message  # leaves the loop early, like break
        raise AssertionError("the iterator ended")

    reader = asyncio.create_task(first_message())
    await publish_until_subscribed(server, "news", "hello")
    assert await reader == Message(channel="news", data="hello", raw=b"hello")
    # The abandoned iterator is closed by asyncio's async-generator hook a moment later.
    await async_wait_until(lambda: subscribers(server, "news") == 0, what="PUBSUB NUMSUB 0")
    await async_wait_until(lambda: subscribed_clients(server) == 0, what="no subscribed client")


async def test_aclosing_releases_the_connection_at_a_known_point(server: redis.Redis) -> None:
    async with contextlib.aclosing(subscribe("news")) as messages:
        reader = asyncio.create_task(anext(messages))
        await publish_until_subscribed(server, "news", "one")
        assert (await reader).data == "one"
    # Closed by the time aclose() returned: the server sees the hang-up right after.
    await async_wait_until(lambda: subscribed_clients(server) == 0, what="no subscribed client")


async def test_an_exception_in_the_body_releases_the_connection(server: redis.Redis) -> None:
    async def consume() -> None:
        async for _ in subscribe("news"):
            raise RuntimeError("consumer failed")

    reader = asyncio.create_task(consume())
    await publish_until_subscribed(server, "news", "boom")
    with pytest.raises(RuntimeError, match="consumer failed"):
        await reader
    await async_wait_until(lambda: subscribed_clients(server) == 0, what="no subscribed client")


@pytest.mark.both_loops
async def test_cancelling_the_consumer_releases_the_connection(server: redis.Redis) -> None:
    async def consume() -> None:
        async for _ in subscribe("news"):
            pass

    reader = asyncio.create_task(consume())
    await async_wait_until(lambda: subscribers(server, "news") == 1, what="a subscriber")
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await async_wait_until(lambda: subscribed_clients(server) == 0, what="no subscribed client")


def test_a_loop_ending_with_a_live_subscription_closes_it_cleanly(server: redis.Redis) -> None:
    async def main() -> None:
        messages = subscribe("news")
        reader = asyncio.ensure_future(anext(messages))
        await publish_until_subscribed(server, "news", "last")
        assert (await reader).data == "last"
        # Return with `messages` still open: asyncio.run's shutdown must close it in the loop.

    asyncio.run(main())
    wait_until(lambda: subscribed_clients(server) == 0, what="no subscribed client")


async def test_patterns_report_the_pattern_that_matched(server: redis.Redis) -> None:
    async def first() -> Message:
        async for message in subscribe("jobs:*", pattern=True):
            return message
        raise AssertionError("the iterator ended")

    reader = asyncio.create_task(first())
    await async_wait_until(lambda: server.pubsub_numpat() == 1, what="a pattern subscriber")
    assert await publish("jobs:42", {"progress": 0.5}) is True
    message = await reader
    assert (message.channel, message.pattern) == ("jobs:42", "jobs:*")
    assert message.json() == {"progress": 0.5}


async def test_several_channels_at_once(server: redis.Redis) -> None:
    seen: list[str] = []

    async def collect() -> None:
        async for message in subscribe("a", "b"):
            seen.append(f"{message.channel}={message.data}")
            if len(seen) == 2:
                return

    reader = asyncio.create_task(collect())
    await async_wait_until(lambda: subscribers(server, "b") == 1, what="subscribed to b")
    assert await publish("a", "1")
    assert await publish("b", "2")
    await reader
    assert seen == ["a=1", "b=2"]


async def test_a_server_restart_is_survived(
    server: redis.Redis, private_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[str] = []

    async def collect() -> None:
        async for message in subscribe("news"):
            received.append(message.data)

    reader = asyncio.create_task(collect())
    await publish_until_subscribed(server, "news", "before")
    await async_wait_until(lambda: received == ["before"], what="the first message")
    with caplog.at_level(logging.INFO, logger="loopsafe.redis"):
        await asyncio.to_thread(private_redis.restart)
        # Messages sent before the subscription is restored are lost (pub/sub keeps nothing):
        # keep publishing until one arrives.
        after = observe(private_redis)
        try:
            for attempt in range(200):
                if subscribers(after, "news"):
                    assert await publish("news", f"after-{attempt}") is True
                    break
                await asyncio.sleep(0.05)
            await async_wait_until(lambda: len(received) == 2, what="a message after restart")
        finally:
            after.close()
    assert received[0] == "before"
    assert received[1].startswith("after-")
    assert "loopsafe.subscription_lost" in events(caplog)
    assert "loopsafe.subscription_restored" in events(caplog)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


async def test_a_server_gone_for_good_ends_with_a_clear_error(
    server: redis.Redis, private_redis: EmbeddedRedis
) -> None:
    async def collect() -> None:
        async for _ in subscribe("news", reconnect_timeout=0.5):
            pass

    reader = asyncio.create_task(collect())
    await async_wait_until(lambda: subscribers(server, "news") == 1, what="a subscriber")
    await asyncio.to_thread(private_redis.kill)
    with pytest.raises(
        SubscriptionLostError, match=r"to news and could not restore it within 0\.5 s"
    ) as caught:
        await reader
    assert isinstance(caught.value, redis.exceptions.ConnectionError)


async def test_reconnect_timeout_zero_ends_on_the_first_loss(
    server: redis.Redis, private_redis: EmbeddedRedis
) -> None:
    async def collect() -> None:
        async for _ in subscribe("news", reconnect_timeout=0):
            pass

    reader = asyncio.create_task(collect())
    await async_wait_until(lambda: subscribers(server, "news") == 1, what="a subscriber")
    await asyncio.to_thread(private_redis.restart)  # back at once, but 0 means do not retry
    with pytest.raises(SubscriptionLostError, match="within 0 s"):
        await reader


async def test_subscribing_while_the_server_is_down_ends_with_a_clear_error(
    private_redis: EmbeddedRedis,
) -> None:
    configure(private_redis.url)
    await asyncio.to_thread(private_redis.stop)
    with pytest.raises(SubscriptionLostError, match=r"could not restore it within 0\.3 s"):
        async for _ in subscribe("news", reconnect_timeout=0.3):
            pass


async def _first(messages: AsyncIterator[Message]) -> Message:
    return await anext(messages)


async def test_subscribe_needs_a_channel(configured: str) -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        await _first(subscribe())


async def test_channel_names_must_be_strings(configured: str) -> None:
    with pytest.raises(TypeError, match="channel names must be str, got bytes"):
        await _first(subscribe(b"news"))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
async def test_reconnect_timeout_must_be_a_finite_non_negative_number(
    configured: str, bad: float
) -> None:
    with pytest.raises(
        ValueError, match="reconnect_timeout must be a finite number of seconds >= 0"
    ):
        await _first(subscribe("news", reconnect_timeout=bad))


@pytest.mark.parametrize("bad", ["30", True, None])
async def test_reconnect_timeout_must_be_a_number_not_a_bool(configured: str, bad: object) -> None:
    with pytest.raises(TypeError, match="reconnect_timeout must be a number of seconds, got "):
        await _first(subscribe("news", reconnect_timeout=bad))  # type: ignore[arg-type]


def test_message_json_on_a_non_json_payload_raises() -> None:
    with pytest.raises(json.JSONDecodeError):
        Message(channel="c", data="not json").json()
