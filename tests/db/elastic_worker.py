"""A process of an elastic role: ``python -m tests.db.elastic_worker MODE PLAN ROLE URL POOLER …``.

PLAN is the plan's JSON, POOLER ``transaction`` or ``none``. Modes:

``hammer SESSIONS ROUNDS HOLD SLOTS``: waits for a line on stdin, then runs ROUNDS × SESSIONS
concurrent sessions of HOLD seconds each and prints the errors as JSON. With SLOTS > 0 each
session must win one of SLOTS advisory transaction locks (`claim_slot`): more concurrent
transactions than SLOTS fail, whatever the sampling luck.
``hold N [SLOTS]``: opens N sessions (each winning one of SLOTS slots, if given), prints ``held``
and sleeps (to be killed).
``queue HOLD``: prints ``asking``, takes one session, prints ``got <time>``, holds it HOLD s.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import zlib
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from loopsafe.db import BudgetPlan, Database

#: Advisory lock namespace of the slot check (any int32 not used elsewhere by the suite).
SLOT_NAMESPACE = 20_020


async def claim_slot(session: AsyncSession, slots: int, scope: str = "") -> None:
    """Take one of `slots` advisory transaction locks; raise if all are taken.

    Each concurrent transaction holds one until it ends, so a failure proves that more than
    `slots` transactions were open at once on the server. A `scope` (the plan's name) gives the
    locks a namespace of their own: test runs sharing the database do not take each other's.
    """
    namespace = zlib.crc32(scope.encode()) & 0x7FFFFFFF if scope else SLOT_NAMESPACE
    for slot in range(slots):
        won = await session.scalar(
            text("SELECT pg_try_advisory_xact_lock(:ns, :slot)"),
            {"ns": namespace, "slot": slot},
        )
        if won:
            return
    raise RuntimeError(f"more than {slots} transactions at once: every slot was taken")


def database(plan: str, role: str, url: str, pooler: str, **options: Any) -> Database:
    budget = BudgetPlan.load(plan).budget_for(role)
    return Database(
        url,
        name=f"elastic-{role}",
        budget=budget,
        pooler="transaction" if pooler == "transaction" else None,
        engine_options=options or None,
    )


async def hammer(
    db: Database, sessions: int, rounds: int, hold: float, slots: int, scope: str
) -> list[str]:
    async def one() -> None:
        async with db.session() as session:
            if slots:
                await claim_slot(session, slots, scope)
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": hold})

    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    errors: list[str] = []
    for _ in range(rounds):
        outcomes = await asyncio.gather(*(one() for _ in range(sessions)), return_exceptions=True)
        errors.extend(f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException))
    return errors


async def hold(db: Database, count: int, slots: int, scope: str) -> None:
    sessions = [db.session() for _ in range(count)]
    for session in sessions:
        opened = await session.__aenter__()
        if slots:
            await claim_slot(opened, slots, scope)
        await opened.execute(text("SELECT 1"))
    print("held", flush=True)
    await asyncio.sleep(3600)


async def queue(db: Database, seconds: float) -> None:
    print("asking", flush=True)
    async with db.session() as session:
        print(f"got {time.time()}", flush=True)
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})


async def main(mode: str, plan: str, role: str, url: str, pooler: str, *args: str) -> None:
    db = database(plan, role, url, pooler, pool_timeout=60)
    scope = json.loads(plan)["name"]  # slots of this plan's own (see `claim_slot`)
    try:
        if mode == "hammer":
            sessions, rounds, seconds, slots = (
                int(args[0]),
                int(args[1]),
                float(args[2]),
                int(args[3]),
            )
            print(json.dumps(await hammer(db, sessions, rounds, seconds, slots, scope)), flush=True)
        elif mode == "hold":
            await hold(db, int(args[0]), int(args[1]) if len(args) > 1 else 0, scope)
        elif mode == "queue":
            await queue(db, float(args[0]))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await db.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
