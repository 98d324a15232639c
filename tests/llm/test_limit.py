"""limit(name) in one process: a shared cap over loops and threads, first come first served,
bounded waits, and a provider's Retry-After holding everyone back."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from typing import Any

import httpx
import openai
import pytest
import redis

import loopsafe.redis
from loopsafe.llm import Limit, LimitTimeoutError, configure, get_openai, limit
from loopsafe.llm._transport import DEFAULT_PAUSE, retry_after

from ..conftest import run_on_new_loop
from ..forking import in_child
from ..redis.conftest import async_wait_until
from .conftest import stats

pytestmark = pytest.mark.redis


@pytest.fixture
def observer(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def setup(llm_server_url: str, redis_url: str, namespace: str, **limit: float) -> None:
    loopsafe.redis.configure(redis_url)
    limits = {"openai": Limit(**limit)} if limit else {}  # type: ignore[arg-type]
    configure(
        openai_api_key="k",
        openai_base_url=llm_server_url,
        max_retries=0,
        timeout=20,
        limits=limits,
        namespace=namespace,
    )


def calls_from_threads(model: str, *, threads: int, calls: int) -> list[BaseException]:
    """`threads` threads, each on its own loop, send `calls` concurrent completions of `model`."""
    errors: list[BaseException] = []

    async def burst() -> None:
        async def one(n: int) -> None:
            await get_openai().chat.completions.create(
                model=model, messages=[{"role": "user", "content": str(n)}]
            )

        results = await asyncio.gather(*(one(n) for n in range(calls)), return_exceptions=True)
        errors.extend(r for r in results if isinstance(r, BaseException))

    workers = [threading.Thread(target=asyncio.run, args=(burst(),)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return errors


async def queued(observer: redis.Redis, namespace: str, count: int) -> None:
    """Wait until the openai limit's queue holds `count` waiters."""
    key = f"{namespace}:{{openai}}:queue"
    await async_wait_until(lambda: observer.zcard(key) == count, what=f"{count} queued")


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "unlimited"])
def test_the_limit_keeps_every_loop_together_under_the_providers_cap(
    llm_server_url: str, redis_url: str, namespace: str, limited: bool
) -> None:
    """The unlimited run shows the load really exceeds the cap: the limit is what prevents 429s."""
    setup(llm_server_url, redis_url, namespace, **({"concurrency": 3} if limited else {}))
    tag = uuid.uuid4().hex
    errors = calls_from_threads(f"busy:3:60:{tag}", threads=3, calls=4)
    seen = stats(llm_server_url, tag)
    if limited:
        assert errors == []
        assert seen == {"served": 12, "rejected": 0, "max_in_flight": 3}
    else:
        assert seen["rejected"] > 0
        assert all(isinstance(error, openai.RateLimitError) for error in errors)


async def test_waiters_are_served_first_come_first_served(
    llm_server_url: str, redis_url: str, namespace: str, observer: redis.Redis
) -> None:
    setup(llm_server_url, redis_url, namespace, concurrency=1)
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with limit("openai"):
            order.append(n)

    async with limit("openai"):
        tasks = []
        for n in range(5):
            tasks.append(asyncio.create_task(waiter(n)))
            # The next waiter arrives only once this one has its place in the queue.
            await queued(observer, namespace, n + 1)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_wait_longer_than_max_wait_raises_and_leaves_nothing_behind(
    llm_server_url: str, redis_url: str, namespace: str, observer: redis.Redis
) -> None:
    setup(llm_server_url, redis_url, namespace, concurrency=1, max_wait=0.3)
    async with limit("openai"):
        with pytest.raises(
            LimitTimeoutError,
            match=r"No slot of the LLM limit 'openai' \(1 at once, shared by every process\) "
            r"within max_wait=0\.3 s; nothing was sent",
        ):
            async with limit("openai"):
                pytest.fail("entered a full limit")
        assert observer.zcard(f"{namespace}:{{openai}}:queue") == 0
    assert observer.zcard(f"{namespace}:{{openai}}:held") == 0
    async with limit("openai"):  # the slot was given back
        pass


async def test_a_cancelled_waiter_gives_up_its_place(
    llm_server_url: str, redis_url: str, namespace: str, observer: redis.Redis
) -> None:
    setup(llm_server_url, redis_url, namespace, concurrency=1)

    async def wait_forever() -> None:
        async with limit("openai"):
            pytest.fail("entered a full limit")

    async with limit("openai"):
        waiter = asyncio.create_task(wait_forever())
        await queued(observer, namespace, 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert observer.zcard(f"{namespace}:{{openai}}:queue") == 0


async def test_a_429_pauses_every_caller_for_its_retry_after(
    llm_server_url: str, redis_url: str, namespace: str, observer: redis.Redis
) -> None:
    setup(llm_server_url, redis_url, namespace, concurrency=5, max_wait=0.5)
    tag = uuid.uuid4().hex
    with pytest.raises(openai.RateLimitError):
        await get_openai().chat.completions.create(
            model=f"throttle:30:{tag}", messages=[{"role": "user", "content": "x"}]
        )
    assert observer.pttl(f"{namespace}:{{openai}}:pause") > 20_000
    # Any other loop (and any other process, through Redis) now waits rather than call.
    failures: list[BaseException] = []

    async def elsewhere() -> None:
        try:
            async with limit("openai"):
                pytest.fail("entered a paused limit")
        except LimitTimeoutError as exc:
            failures.append(exc)

    thread = threading.Thread(target=asyncio.run, args=(elsewhere(),))
    thread.start()
    thread.join(timeout=30)
    assert len(failures) == 1
    assert stats(llm_server_url, tag) == {"served": 0, "rejected": 1, "max_in_flight": 0}


@pytest.mark.both_loops
async def test_the_limit_holds_slots_until_a_streamed_body_is_closed(
    llm_server_url: str, redis_url: str, namespace: str, observer: redis.Redis
) -> None:
    setup(llm_server_url, redis_url, namespace, concurrency=2)
    held = f"{namespace}:{{openai}}:held"
    async with get_openai().chat.completions.with_streaming_response.create(
        model="echo-1", messages=[{"role": "user", "content": "x"}]
    ) as response:
        assert observer.zcard(held) == 1
        await response.read()
    assert observer.zcard(held) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_forked_child_counts_against_the_same_limit_as_its_parent(
    llm_server_url: str, redis_url: str, namespace: str
) -> None:
    setup(llm_server_url, redis_url, namespace, concurrency=2, max_wait=0.3)

    def child() -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            async with limit("openai"):  # the second of two slots; the parent holds the first
                try:
                    async with limit("openai"):
                        return {"third": "entered"}
                except LimitTimeoutError:
                    return {"third": "refused"}

        return run_on_new_loop(asyncio.new_event_loop, work())

    async with limit("openai"):
        report = await asyncio.to_thread(in_child, child)
    assert report == {"third": "refused"}
    async with limit("openai"), limit("openai"):  # the child gave its slot back
        pass


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # OpenAI's finer header wins
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry-after": "soon"}, DEFAULT_PAUSE),  # unreadable: the default pause
        ({"retry-after": "-3"}, 0.0),
        ({}, DEFAULT_PAUSE),
    ],
)
def test_retry_after_is_read_like_the_providers_send_it(
    headers: dict[str, str], seconds: float
) -> None:
    assert retry_after(httpx.Headers(headers)) == seconds
