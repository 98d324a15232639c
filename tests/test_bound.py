"""await_bounded: a result within the bound, a TimeoutError after it, and a bounded grace period."""

from __future__ import annotations

import asyncio

import pytest

from loopsafe import LoopsafeError
from loopsafe._bound import await_bounded
from loopsafe._errors import BoundExceededError


@pytest.mark.both_loops
async def test_returns_the_result_and_propagates_errors_within_the_bound() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise KeyError("boom")

    assert await await_bounded(answer(), 5.0) == 42
    with pytest.raises(KeyError, match="boom"):
        await await_bounded(fail(), 5.0)


@pytest.mark.both_loops
async def test_cancels_at_the_bound_and_lets_cleanup_run() -> None:
    cleaned = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()

    with pytest.raises(BoundExceededError, match=r"^did not finish within 0\.05 s$") as caught:
        await await_bounded(slow(), 0.05)
    assert cleaned.is_set()
    assert caught.value.settled
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, LoopsafeError)


@pytest.mark.both_loops
async def test_gives_up_on_code_that_swallows_cancellation_after_the_grace() -> None:
    release = asyncio.Event()
    swallowed = 0

    async def stubborn() -> str:
        nonlocal swallowed
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                swallowed += 1
        return "finished late"

    with pytest.raises(
        BoundExceededError, match=r"ignored cancellation for 0\.05 s more"
    ) as caught:
        await await_bounded(stubborn(), 0.05, grace=0.05)
    assert not caught.value.settled
    assert swallowed == 1
    # It was left running, not lost: let it end so the loop closes cleanly.
    release.set()
    await asyncio.sleep(0.01)


@pytest.mark.both_loops
async def test_cancelling_the_caller_cancels_the_awaited_task_too() -> None:
    started = asyncio.Event()
    inner_cancelled = asyncio.Event()

    async def inner() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    outer = asyncio.ensure_future(await_bounded(inner(), 3600))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner_cancelled.is_set()


def test_bounds_a_plain_run_until_complete() -> None:
    """No running task context beyond run_until_complete, as in run_async's loops."""
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TimeoutError):
            loop.run_until_complete(await_bounded(asyncio.sleep(3600), 0.01))
    finally:
        loop.close()
