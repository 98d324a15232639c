"""LoopLocal: one instance per running loop, never another loop's, thread's or process's."""

from __future__ import annotations

import asyncio
import gc
import math
import subprocess
import sys
import threading
import weakref

import pytest

import loopsafe
from loopsafe import LoopLocal, LoopsafeError, NoRunningLoopError, RegistryStats, loop_local

from .conftest import LoopFactory


class Resource:
    """A stand-in for an engine or client: remembers the loop it was made on."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.closed_in: asyncio.AbstractEventLoop | None = None
        self.dropped = False

    async def aclose(self) -> None:
        self.closed_in = asyncio.get_running_loop()


def drop(resource: Resource) -> None:
    resource.dropped = True


@pytest.mark.both_loops
async def test_get_returns_one_instance_per_loop_and_the_same_on_repeat() -> None:
    local = LoopLocal(Resource, drop=drop, name="res")
    first = local.get()
    assert first is local.get()
    assert first is local()
    assert first.loop is asyncio.get_running_loop()


def test_threads_racing_on_their_first_uses_get_one_instance_per_loop_and_exact_counts() -> None:
    """Eight threads start a new loop each round, all at once, and hit one registry together.

    Each loop's factory runs once; the counters, updated from every thread, add up exactly.
    The switch interval is cut to a microsecond so threads really interleave inside `get()`.
    """
    local = LoopLocal(Resource, name="thread-race")
    threads_count, rounds = 8, 10
    barrier = threading.Barrier(threads_count)
    seen: list[Resource] = []
    failures: list[BaseException] = []

    async def first_uses() -> Resource:
        barrier.wait(timeout=30)
        first = local.get()
        for _ in range(50):
            assert local.get() is first
        return first

    def worker() -> None:
        try:
            for _ in range(rounds):
                seen.append(asyncio.run(first_uses()))
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    assert len(seen) == threads_count * rounds
    assert len({id(resource) for resource in seen}) == len(seen)  # all alive: ids are unique
    assert len({id(resource.loop) for resource in seen}) == len(seen)
    row = _row("thread-race")
    assert (row["created"], row["loops"], row["closed"], row["live"]) == (
        len(seen),
        len(seen),
        len(seen),
        0,
    )


def test_reused_loop_ids_never_hand_out_a_dead_loops_instance(loop_factory: LoopFactory) -> None:
    """The `id(loop)`-keyed dict bug: CPython reuses the ids of dead loops."""
    local = LoopLocal(Resource)
    seen_ids: set[int] = set()
    reused = 0
    for _ in range(200):
        loop = loop_factory()
        reused += id(loop) in seen_ids
        seen_ids.add(id(loop))

        async def check() -> None:
            resource = local.get()
            assert resource.loop is asyncio.get_running_loop()
            assert resource.closed_in is None

        loop.run_until_complete(check())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        del loop
    # The scenario is only meaningful if ids really were reused on this interpreter.
    assert reused > 0


def test_sixteen_threads_racing_each_get_their_own_loops_instance() -> None:
    created: list[Resource] = []
    lock = threading.Lock()

    def factory() -> Resource:
        resource = Resource()
        with lock:
            created.append(resource)
        return resource

    local = LoopLocal(factory, name="race")
    barrier = threading.Barrier(16)
    results: dict[int, tuple[Resource, asyncio.AbstractEventLoop]] = {}
    errors: list[BaseException] = []

    async def race(index: int) -> None:
        await asyncio.to_thread(barrier.wait)
        got = await asyncio.gather(*(asyncio.to_thread(lambda: None) for _ in range(2)))
        assert got == [None, None]
        results[index] = (local.get(), asyncio.get_running_loop())
        assert local.get() is results[index][0]

    def run(index: int) -> None:
        try:
            asyncio.run(race(index))
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(created) == 16
    assert len({id(resource) for resource, _ in results.values()}) == 16
    for resource, loop in results.values():
        assert resource.loop is loop
        assert resource.closed_in is loop


def test_get_outside_a_loop_raises_a_clear_error() -> None:
    local = LoopLocal(Resource, name="engine")
    with pytest.raises(
        NoRunningLoopError,
        match=r"LoopLocal 'engine' was used in thread 'MainThread', where no event loop is running\. Call it from async code",
    ) as info:
        local.get()
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, LoopsafeError)
    assert len(local) == 0


async def test_get_in_an_executor_thread_raises_rather_than_sharing_the_loops_instance() -> None:
    local = LoopLocal(Resource, name="engine")
    mine = local.get()
    with pytest.raises(NoRunningLoopError, match="where no event loop is running"):
        await asyncio.to_thread(local.get)
    assert local.get() is mine


async def test_a_factory_that_needs_its_own_instance_gets_a_clear_error() -> None:
    local: LoopLocal[Resource]

    def factory() -> Resource:
        local.get()
        return Resource()  # pragma: no cover - never reached

    local = LoopLocal(factory, name="selfish")
    with pytest.raises(
        LoopsafeError, match=r"factory of LoopLocal 'selfish' called 'selfish'\.get"
    ):
        local.get()
    assert local.peek() is None


async def test_a_failing_factory_stores_nothing_and_the_next_get_retries() -> None:
    attempts = 0

    def flaky() -> Resource:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("server not up yet")
        return Resource()

    local = LoopLocal(flaky)
    with pytest.raises(ConnectionError, match="server not up yet"):
        local.get()
    assert local.peek() is None
    assert isinstance(local.get(), Resource)
    assert attempts == 2


def test_bad_arguments_are_refused_with_clear_errors() -> None:
    with pytest.raises(TypeError, match="LoopLocal factory must be callable, got 42"):
        LoopLocal(42)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="close_timeout must be a finite number of seconds > 0, got 0"
    ):
        LoopLocal(Resource, close_timeout=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 0])
def test_close_timeout_must_be_finite_and_positive(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"close_timeout must be a finite .* > 0, got {bad!r}"):
        LoopLocal(Resource, close_timeout=bad)
    with pytest.raises(ValueError, match="close_timeout must be a finite"):
        loop_local(close_timeout=bad)


@pytest.mark.parametrize("bad", [True, "10", None])
def test_close_timeout_must_be_a_number_not_a_bool(bad: object) -> None:
    with pytest.raises(TypeError, match=r"close_timeout must be a number of seconds, got "):
        LoopLocal(Resource, close_timeout=bad)  # type: ignore[arg-type]


async def test_peek_never_creates() -> None:
    local = LoopLocal(Resource)
    assert local.peek() is None
    made = local.get()
    assert local.peek() is made


def test_peek_outside_a_loop_is_none() -> None:
    assert LoopLocal(Resource).peek() is None


@pytest.mark.both_loops
async def test_aclose_closes_in_this_loop_and_the_next_get_makes_a_new_one() -> None:
    local = LoopLocal(Resource)
    first = local.get()
    await local.aclose()
    assert first.closed_in is asyncio.get_running_loop()
    assert local.peek() is None
    assert local.get() is not first
    await local.aclose()
    await local.aclose()  # nothing left: a no-op


async def test_aclose_propagates_the_close_error_and_still_forgets_the_instance() -> None:
    async def broken(resource: Resource) -> None:
        raise OSError("socket already gone")

    local = LoopLocal(Resource, aclose=broken, drop=drop)
    made = local.get()
    with pytest.raises(OSError, match="socket already gone"):
        await local.aclose()
    assert made.dropped
    assert local.peek() is None
    assert local.get() is not made


def test_clear_drops_every_loops_instance_without_io() -> None:
    local = LoopLocal(Resource, drop=drop)
    loops = [asyncio.new_event_loop() for _ in range(3)]
    made = [loop.run_until_complete(_get(local)) for loop in loops]
    assert len(local) == 3
    local.clear()
    assert len(local) == 0
    assert all(resource.dropped and resource.closed_in is None for resource in made)
    for loop in loops:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert all(resource.closed_in is None for resource in made)


async def _get(local: LoopLocal[Resource]) -> Resource:
    return local.get()


def test_loop_local_decorator_bare_and_with_options() -> None:
    @loop_local
    def bare() -> Resource:
        return Resource()

    closed: list[Resource] = []

    async def close(resource: Resource) -> None:
        closed.append(resource)

    @loop_local(aclose=close, name="configured")
    def configured() -> Resource:
        return Resource()

    assert isinstance(bare, LoopLocal)
    assert bare.name.endswith("bare")
    assert configured.name == "configured"

    async def main() -> None:
        assert bare() is bare.get()
        assert configured() is configured.get()

    asyncio.run(main())
    assert len(closed) == 1


def test_default_close_uses_the_instances_own_close_method() -> None:
    class SyncClose:
        closed = False

        def close(self) -> None:
            self.closed = True

    class NoClose:
        pass

    sync_local = LoopLocal(SyncClose)
    plain_local = LoopLocal(NoClose)

    async def main() -> tuple[SyncClose, NoClose]:
        return sync_local.get(), plain_local.get()

    sync_made, _ = asyncio.run(main())
    assert sync_made.closed
    assert len(plain_local) == 0


def test_nothing_loopsafe_holds_keeps_a_finished_loop_alive(loop_factory: LoopFactory) -> None:
    local = LoopLocal(Resource)
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    for clean in (True, False):
        loop = loop_factory()
        made = loop.run_until_complete(_get(local))
        if clean:
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        refs.append(weakref.ref(loop))
        del loop, made
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert len(local) == 0


def test_stats_has_one_row_per_registry_with_counters() -> None:
    local = LoopLocal(Resource, name="stats-probe")

    async def main() -> None:
        local.get()
        assert _row("stats-probe")["live"] == 1

    asyncio.run(main())
    asyncio.run(main())
    row = _row("stats-probe")
    assert row == {
        "name": "stats-probe",
        "live": 0,
        "loops": 2,
        "created": 2,
        "closed": 2,
        "dropped": 0,
        "abandoned": 0,
        "failed": 0,
    }
    assert repr(local) == "<LoopLocal 'stats-probe' live=0>"


def _row(name: str) -> RegistryStats:
    rows = [row for row in loopsafe.stats() if row["name"] == name]
    assert len(rows) == 1
    return rows[0]


def test_importing_loopsafe_does_not_import_integrations() -> None:
    code = (
        "import sys, loopsafe; "
        "print(sorted(m for m in ('sqlalchemy', 'redis', 'celery', 'asyncpg') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
