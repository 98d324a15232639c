"""A budget is a promise: real processes and loops under load never hold more than their share.

The server enforces it: every test connects as a role with a CONNECTION LIMIT equal to the budget,
so a single connection too many, however short-lived, fails the test (see `limited_role`). Each
budgeted test has an unbudgeted control that shows the limit biting under the same load.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
import threading

import pytest
from sqlalchemy import text

import loopsafe
from loopsafe.db import Database, PoolBudget, PoolExhaustedError

from .conftest import TOO_MANY, limited_role

# One worker process: 60 concurrent sessions, each holding its connection for a moment.
WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    from sqlalchemy import text
    from loopsafe.db import Database, PoolBudget

    url, name, processes, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    budget = PoolBudget(max_connections=20, processes=processes) if processes else None
    options = {} if budget else {"pool_size": 12, "max_overflow": 0}
    db = Database(url, name=name, budget=budget, engine_options=options)

    async def one() -> None:
        async with db.session() as session:
            await session.execute(text("SELECT pg_sleep(0.03)"))

    async def main() -> None:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for _ in range(2):
            await asyncio.gather(*(one() for _ in range(sessions)))
        print(json.dumps(db.pool_status()), flush=True)

    asyncio.run(main())
    """
)


async def _run_workers(
    url: str, name: str, *, processes: int, budgeted: bool, sessions: int = 60
) -> list[tuple[int, bytes, bytes]]:
    """Start `processes` workers, release them together; (exit code, stdout, stderr) of each."""
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            url,
            name,
            str(processes if budgeted else 0),
            str(sessions),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert (await asyncio.wait_for(worker.stdout.readline(), 60)).strip() == b"ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        outputs = [await asyncio.wait_for(worker.communicate(), 90) for worker in workers]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    return [
        (worker.returncode or 0, out, err)
        for worker, (out, err) in zip(workers, outputs, strict=True)
    ]


@pytest.mark.slow
async def test_six_processes_stay_within_a_budget_of_twenty(
    postgres_url: str, db_name: str
) -> None:
    """6 processes × 60 concurrent sessions, max_connections=20: the server allows 18, never refuses."""
    async with limited_role(postgres_url, 18) as url:
        results = await _run_workers(url, db_name, processes=6, budgeted=True)
    for code, out, err in results:
        assert code == 0, err.decode()
        status = json.loads(out.strip().splitlines()[-1])
        assert status["capacity"] == 3  # 18 usable / 6 processes
        assert status["checked_out"] == 0


@pytest.mark.slow
async def test_without_a_budget_the_same_load_is_refused_by_the_server(
    postgres_url: str, db_name: str
) -> None:
    """Control: unbudgeted pools (12 connections each) run into the role's limit of 18."""
    async with limited_role(postgres_url, 18) as url:
        results = await _run_workers(url, db_name, processes=2, budgeted=False)
    assert any(code != 0 and TOO_MANY in err.decode() for code, _, err in results), results


def _hammer(db: Database, sessions: int, start: threading.Barrier, errors: list[str]) -> None:
    async def one() -> None:
        async with db.session() as session:
            await session.execute(text("SELECT pg_sleep(0.02)"))

    async def main() -> list[BaseException | None]:
        await asyncio.to_thread(start.wait)
        # Every session runs to its own end: were the first refusal to cancel its siblings, one
        # cancelled while SQLAlchemy 2.0 opens its connection would leak that connection (2.1 does
        # not), and the control would test SQLAlchemy rather than the budget.
        return await asyncio.gather(*(one() for _ in range(sessions)), return_exceptions=True)

    errors.extend(
        f"{type(outcome).__name__}: {outcome}" for outcome in asyncio.run(main()) if outcome
    )


@pytest.mark.parametrize("budgeted", [True, False])
async def test_more_loops_than_budgeted_wait_instead_of_exceeding(
    postgres_url: str, db_name: str, app_name: str, budgeted: bool
) -> None:
    """A process budgeted for 1 loop runs 3: the process-wide cap (4) still holds; without a
    budget, one pool's size (2 + 2) is that cap."""
    budget = PoolBudget(max_connections=4, processes=1, reserve=0) if budgeted else None
    options = {} if budgeted else {"pool_size": 2, "max_overflow": 2, "pool_timeout": 2}
    errors: list[str] = []
    async with limited_role(postgres_url, 4) as url:
        db = Database(url, name=db_name, budget=budget, engine_options=options)
        start = threading.Barrier(3)
        threads = [threading.Thread(target=_hammer, args=(db, 12, start, errors)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            await asyncio.to_thread(thread.join)
    # Each loop's pool alone allows 4: without the process-wide cap 3 loops went past the role's
    # limit ("too many connections").
    assert errors == []


async def test_exhausted_pool_raises_naming_the_budget(postgres_url: str, db_name: str) -> None:
    budget = PoolBudget(max_connections=1, processes=1, reserve=0)
    db = Database(postgres_url, name=db_name, budget=budget, engine_options={"pool_timeout": 0.2})
    async with db.session() as session:
        await session.execute(text("SELECT 1"))
        with pytest.raises(TimeoutError) as caught:  # a PoolExhaustedError is also a TimeoutError
            async with db.session():
                pass
        assert isinstance(caught.value, PoolExhaustedError)
        assert re.search(r"PoolBudget\(max_connections=1.*gives this", str(caught.value))
    async with db.session() as session:  # and the pool is fine afterwards
        await session.execute(text("SELECT 1"))


async def test_exhausted_process_quota_raises_across_loops(postgres_url: str, db_name: str) -> None:
    budget = PoolBudget(max_connections=1, processes=1, reserve=0)
    db = Database(postgres_url, name=db_name, budget=budget, engine_options={"pool_timeout": 0.2})
    async with db.session() as session:
        await session.execute(text("SELECT 1"))

        async def other_loop() -> None:
            async with db.session():
                pass

        with pytest.raises(PoolExhaustedError, match="in use by its loops"):
            await asyncio.to_thread(asyncio.run, other_loop())
    # The slot came back: the other loop can have it now.
    await asyncio.to_thread(asyncio.run, other_loop())


@pytest.mark.parametrize("budgeted", [True, False])
async def test_null_pool_respects_the_budget(
    postgres_url: str, db_name: str, budgeted: bool
) -> None:
    """15 concurrent sessions, a connection each, against a server that allows 3."""
    budget = PoolBudget(max_connections=3, processes=1, reserve=0) if budgeted else None
    async with limited_role(postgres_url, 3) as url:
        db = Database(url, name=db_name, budget=budget, poolclass="null")

        async def one() -> None:
            async with db.session() as session:
                await session.execute(text("SELECT pg_sleep(0.02)"))

        outcomes = await asyncio.gather(*(one() for _ in range(15)), return_exceptions=True)
        if budgeted:
            assert db.pool_status()["capacity"] == 3
        await db.aclose()
    refused = [outcome for outcome in outcomes if outcome is not None]
    if budgeted:
        assert refused == []
    else:  # control: without a budget the server refuses the connections past 3
        assert refused
        assert all(TOO_MANY in str(error) for error in refused), refused


def test_an_idle_run_async_loop_gives_its_connection_to_a_thread_that_waits(
    postgres_url: str, db_name: str
) -> None:
    """Without a budget, loops share one pool (1 + 1). Thread A's loop keeps an idle connection
    and A makes no call (nothing runs its loop); B holds the other; C must get A's: A's loop
    closes it on a thread of its own instead of at A's next call (which never comes in time)."""
    db = Database(
        postgres_url,
        name=db_name,
        engine_options={"pool_size": 1, "max_overflow": 1, "pool_timeout": 5},
    )

    async def select() -> int:
        async with db.session() as session:
            return int((await session.execute(text("SELECT 1"))).scalar_one())

    a_done, c_done = threading.Event(), threading.Event()
    b_holds = threading.Event()
    outcomes: dict[str, object] = {}

    async def hold_while_c_runs() -> int:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
            b_holds.set()
            await asyncio.to_thread(c_done.wait, 20)
        return 1

    def run(name: str, call: object, before: threading.Event | None = None) -> None:
        try:
            outcomes[name] = loopsafe.run_async(call, timeout=20)  # type: ignore[arg-type]
        except BaseException as exc:
            outcomes[name] = exc
        if before is not None:
            before.set()

    def a() -> None:
        run("a", select(), a_done)
        c_done.wait(20)  # alive, its loop idle, until C is through
        run("a again", select())

    threads = [threading.Thread(target=a)]
    threads[0].start()
    assert a_done.wait(20)
    threads.append(threading.Thread(target=run, args=("b", hold_while_c_runs())))
    threads[1].start()
    assert b_holds.wait(20)
    threads.append(threading.Thread(target=run, args=("c", select(), c_done)))
    threads[2].start()
    for thread in threads:
        thread.join(30)
    loopsafe.close_all_loops()
    assert outcomes == {"a": 1, "b": 1, "c": 1, "a again": 1}, outcomes
