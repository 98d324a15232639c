"""The private asyncio names loopsafe touches still exist: fails loudly when a release moves one."""

from __future__ import annotations

import asyncio
import asyncio.events
import socket
import sys

import pytest

from loopsafe._asyncio_compat import (
    asyncgens_shut_down,
    cancellation_kept,
    get_running_loop_or_none,
    settled_within,
    take_socket,
)

from .conftest import LOOP_FACTORIES

MOVED = "asyncio on Python {} moved {}: update loopsafe/_asyncio_compat.py"


def test_get_running_loop_or_none_is_asyncio_s_own() -> None:
    assert hasattr(asyncio.events, "_get_running_loop"), MOVED.format(
        sys.version.split()[0], "asyncio.events._get_running_loop"
    )
    assert get_running_loop_or_none() is None

    async def inside() -> bool:
        return get_running_loop_or_none() is asyncio.get_running_loop()

    assert asyncio.run(inside())


def test_asyncio_loops_still_flag_shutdown_asyncgens() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert hasattr(loop, "_asyncgens_shutdown_called"), MOVED.format(
            sys.version.split()[0], "BaseEventLoop._asyncgens_shutdown_called"
        )
        assert not asyncgens_shut_down(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        assert asyncgens_shut_down(loop)
    finally:
        loop.close()


@pytest.mark.parametrize("name", list(LOOP_FACTORIES))
def test_every_loop_implementation_reads_as_not_shut_down_before_its_end(name: str) -> None:
    loop = LOOP_FACTORIES[name]()
    try:
        assert not asyncgens_shut_down(loop)
    finally:
        loop.close()


@pytest.mark.parametrize("name", list(LOOP_FACTORIES))
def test_take_socket_empties_asyncio_transports_and_leaves_others_alone(name: str) -> None:
    ours, theirs = socket.socketpair()

    async def transport_and_take() -> tuple[socket.socket | None, bool]:
        _, writer = await asyncio.open_connection(sock=ours)
        taken = take_socket(writer.transport)
        closing = writer.transport.is_closing()
        if taken is None:  # a transport that hides its socket: close it the ordinary way
            writer.close()
            await writer.wait_closed()
        return taken, closing

    loop = LOOP_FACTORIES[name]()
    try:
        taken, closing = loop.run_until_complete(transport_and_take())
    finally:
        loop.close()
        theirs.close()
    if isinstance(loop, asyncio.BaseEventLoop):
        assert taken is ours, MOVED.format(sys.version.split()[0], "_SelectorTransport._sock")
        assert closing, MOVED.format(sys.version.split()[0], "_SelectorTransport._closing")
        ours.close()
    else:
        assert taken is None


def test_settled_within_raises_a_cancellation_that_arrives_as_the_future_settles() -> None:
    # asyncio.wait_for(asyncio.shield(future)) returned the result here before 3.12, and the
    # cancelled caller went on waiting (a Celery result waiter cancelled as its SUBSCRIBE was
    # confirmed waited out its whole timeout).
    async def main() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = asyncio.create_task(settled_within(future, 10))
        await asyncio.sleep(0)
        future.set_result(None)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())


def test_settled_within_tells_settled_from_timed_out_and_leaves_the_future_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[int] = loop.create_future()
        assert not await settled_within(pending, 0.01)
        assert not pending.done()
        loop.call_soon(pending.set_result, 7)
        assert await settled_within(pending, 10)
        assert pending.result() == 7

    asyncio.run(main())


async def _like_a_redis_command(written: asyncio.Future[None]) -> str:
    # redis-py's socket write: the drain awaited under asyncio.wait_for (its socket_timeout).
    await asyncio.wait_for(written, 5)
    return "reply"


def test_cancellation_kept_raises_a_cancellation_wait_for_swallowed() -> None:
    # Before 3.12 a cancellation arriving as the write finished was lost inside wait_for, and a
    # cancelled Celery result waiter went on waiting for its whole timeout (1 in ~200 in a loop).
    async def main() -> None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        caller = asyncio.create_task(cancellation_kept(_like_a_redis_command(written)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the command's task is now inside wait_for
        written.set_result(None)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(main())


def test_cancellation_kept_returns_the_reply_and_raises_the_error() -> None:
    async def fails() -> None:
        raise ConnectionError("down")

    async def main() -> None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        written.set_result(None)
        assert await cancellation_kept(_like_a_redis_command(written)) == "reply"
        with pytest.raises(ConnectionError, match="down"):
            await cancellation_kept(fails())

    asyncio.run(main())


def test_cancellation_kept_ends_the_command_before_raising() -> None:
    """A lock held around the call is released only once the command has ended."""

    async def main() -> None:
        ended = asyncio.Event()

        async def command() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                await asyncio.sleep(0.01)  # its clean-up takes a moment
                ended.set()

        caller = asyncio.create_task(cancellation_kept(command()))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert ended.is_set()

    asyncio.run(main())
