"""LoopOwner: one wrong-loop / forked-child check and one message style for every integration."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from loopsafe import WrongLoopError
from loopsafe._owner import LoopOwner

from .forking import in_child


def _owner(loop: asyncio.AbstractEventLoop) -> LoopOwner:
    return LoopOwner(loop, what="The widget", fix="Get a widget on the loop that uses it.")


async def test_the_owning_loop_passes_and_synchronous_use_is_left_to_the_library() -> None:
    owner = _owner(asyncio.get_running_loop())
    owner.check()
    await asyncio.to_thread(owner.check)  # no running loop in that thread: not ours to judge


async def test_another_threads_live_loop_is_named_with_both_threads() -> None:
    owner = _owner(asyncio.get_running_loop())
    seen: list[BaseException] = []

    async def misuse() -> None:
        try:
            owner.check()
        except WrongLoopError as exc:
            seen.append(exc)

    thread = threading.Thread(target=asyncio.run, args=(misuse(),), name="other-thread")
    thread.start()
    thread.join(10)
    [error] = seen
    assert str(error).startswith("The widget was created on ")
    assert "'MainThread' (still running) and used on " in str(error)
    assert "'other-thread'. Get a widget on the loop that uses it." in str(error)


def test_an_ended_loop_is_reported_as_ended() -> None:
    loop = asyncio.new_event_loop()
    owner = loop.run_until_complete(_make_owner())
    loop.close()

    async def misuse() -> None:
        owner.check()

    with pytest.raises(WrongLoopError, match=r"\(which has ended\) and used on "):
        asyncio.run(misuse())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_owning_loop_in_a_forked_child_is_refused_and_says_so() -> None:
    loop = asyncio.new_event_loop()
    try:
        owner = loop.run_until_complete(_make_owner())

        def child() -> dict[str, str]:
            async def misuse() -> str:
                try:
                    owner.check()
                except WrongLoopError as exc:
                    return str(exc)
                return "no error"

            return {"message": loop.run_until_complete(misuse()), "parent": str(os.getppid())}

        report = in_child(child)
    finally:
        loop.close()
    assert report["message"].startswith(
        f"The widget was created in process {report['parent']} and used in its forked child "
    )


async def _make_owner() -> LoopOwner:
    return _owner(asyncio.get_running_loop())
