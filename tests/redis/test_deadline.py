"""The shared-timer deadlines behind publish(): same semantics as asyncio.timeout, one timer."""

from __future__ import annotations

import asyncio

import pytest

from loopsafe.redis._deadline import Deadlines

# A hang guard only: every operation below either finishes at once or has a short deadline.
GUARD = 5.0


async def test_an_operation_that_finishes_in_time_returns_its_result() -> None:
    deadlines = Deadlines()

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await deadlines.run(answer(), 1.0) == 42


@pytest.mark.both_loops
async def test_an_operation_past_its_deadline_raises_timeout_error() -> None:
    deadlines = Deadlines()
    async with asyncio.timeout(GUARD):
        with pytest.raises(TimeoutError):
            await deadlines.run(asyncio.sleep(60), 0.05)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # our cancellation was taken back, nothing left pending


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines = Deadlines()
    started = asyncio.Event()

    async def wait() -> None:
        started.set()
        await deadlines.run(asyncio.sleep(60), 30)

    task = asyncio.create_task(wait())
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_shorter_deadline_after_a_longer_one_is_still_honoured() -> None:
    deadlines = Deadlines()
    slow = asyncio.create_task(deadlines.run(asyncio.sleep(60), 30))
    await asyncio.sleep(0)
    async with asyncio.timeout(GUARD):
        with pytest.raises(TimeoutError):
            await deadlines.run(asyncio.sleep(60), 0.05)
    assert not slow.done()  # the long deadline is untouched
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_many_concurrent_deadlines_expire_and_nothing_is_left_behind() -> None:
    deadlines = Deadlines()

    async def one(n: int) -> str:
        try:
            await deadlines.run(asyncio.sleep(60 if n % 2 else 0), 0.05 + n / 1000)
        except TimeoutError:
            return "timeout"
        return "done"

    async with asyncio.timeout(GUARD):
        outcomes = await asyncio.gather(*(one(n) for n in range(100)))
    assert outcomes == ["timeout" if n % 2 else "done" for n in range(100)]
    assert not deadlines._waiting
    assert not deadlines._expired
