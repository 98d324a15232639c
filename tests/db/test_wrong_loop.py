"""WrongLoopError, not asyncpg's cryptic errors or a hang, when an engine crosses loops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from loopsafe import WrongLoopError
from loopsafe.db import Database

T = TypeVar("T")

#: Far longer than the check needs; reaching it means the old hang is back.
NO_HANG = 10.0


def run_in_named_thread(coro: Coroutine[Any, Any, T], name: str) -> T:
    """asyncio.run(coro) in a fresh thread called `name`; returns or raises its outcome."""
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

    def target() -> None:
        try:
            outcome.set_result(asyncio.run(coro))
        except BaseException as error:
            outcome.set_exception(error)

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join(NO_HANG + 5)
    assert not thread.is_alive(), "the wrong-loop use hung"
    return outcome.result()


class LoopThread:
    """A loop running forever in its own thread, so loop A is alive while loop B misuses A's pool."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(NO_HANG)

    def close(self) -> None:
        async def shutdown() -> None:
            await self.loop.shutdown_asyncgens()  # lets loopsafe dispose inside this loop

        self.run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(NO_HANG)
        self.loop.close()


@pytest.fixture
def loop_a() -> Iterator[LoopThread]:
    loop = LoopThread("loop-A-thread")
    yield loop
    loop.close()


@pytest.mark.both_loops
async def test_engine_of_a_running_loop_used_on_another(
    postgres_url: str, db_name: str, loop_a: LoopThread
) -> None:
    db = Database(postgres_url, name=db_name)

    async def warm() -> AsyncEngine:
        async with db.session() as session:  # leaves a checked-in connection bound to loop A
            await session.execute(text("SELECT 1"))
        return db.get_engine()

    engine = loop_a.run(warm())

    async def misuse() -> None:
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))

    with pytest.raises(WrongLoopError) as caught:
        await asyncio.wait_for(misuse(), NO_HANG)
    message = str(caught.value)
    assert "created on" in message
    assert "'loop-A-thread' (still running)" in message
    assert "'MainThread'" in message
    assert "db.session()" in message  # the fix
    # Loop A's engine is unharmed.
    assert loop_a.run(_select_one(db)) == 1


async def test_session_maker_from_an_ended_loop_used_on_another(
    postgres_url: str, db_name: str
) -> None:
    db = Database(postgres_url, name=db_name)

    async def obtain() -> async_sessionmaker[AsyncSession]:
        await _select_one(db)
        return db.session_maker()

    maker = await asyncio.to_thread(run_in_named_thread, obtain(), "worker-1")

    async def misuse() -> None:
        async with maker() as session:
            await session.execute(text("SELECT 1"))

    with pytest.raises(
        WrongLoopError, match=r"thread 'worker-1' \(which has ended\).*thread 'MainThread'"
    ):
        await asyncio.wait_for(misuse(), NO_HANG)
    assert await _select_one(db) == 1  # the right way still works on this loop


def test_session_kept_across_asyncio_runs(postgres_url: str, db_name: str) -> None:
    """The classic bug: a global session/engine created under one asyncio.run, used under the next."""
    db = Database(postgres_url, name=db_name)
    kept: dict[str, AsyncEngine] = {}

    async def first() -> None:
        kept["engine"] = db.get_engine()
        await _select_one(db)

    async def second() -> None:
        async with AsyncSession(kept["engine"]) as session:
            await asyncio.wait_for(session.execute(text("SELECT 1")), NO_HANG)

    asyncio.run(first())
    with pytest.raises(WrongLoopError, match="do not keep one in a global"):
        run_in_named_thread(second(), "second-run")


async def _select_one(db: Database) -> int:
    async with db.session() as session:
        value: int = (await session.execute(text("SELECT 1"))).scalar_one()
    return value
