"""Elastic roles: one limit for the whole deployment, leased through Redis by priority and headroom.

The limit is checked by the server itself wherever possible: behind a transaction pooler each
session must win one of ``limit`` advisory transaction locks (`claim_slot`), directly on the
server the role's CONNECTION LIMIT refuses one connection too many. Each such test has a control
that shows the check biting without the ledger.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from loopsafe.__main__ import main as cli
from loopsafe.db import BudgetPlan, Database, ElasticBudget, PoolExhaustedError, Role, RoleBudget
from loopsafe.db import metrics as db_metrics

from ..forking import in_child
from .conftest import TOO_MANY, limited_role
from .elastic_worker import claim_slot

# -- the plan --------------------------------------------------------------------------------


def test_a_role_without_processes_is_elastic_and_its_budget_says_so() -> None:
    plan = BudgetPlan(
        max_connections=12,
        roles={
            "api": Role(priority=10),
            "worker": Role(priority=0, headroom=2),
            "beat": Role(processes=1),
        },
        reserve=0.0,
        ledger="redis://127.0.0.1:6379/0",
        name="lab",
    )
    assert plan.elastic
    assert plan.elastic_limit == 11
    worker = plan.budget_for("worker")
    assert isinstance(worker, ElasticBudget)
    assert (worker.limit, worker.headroom, worker.per_process) == (11, 2, 9)
    assert worker.higher_roles == ("api",)
    assert plan.budget_for("api").per_process == 11
    beat = plan.budget_for("beat")
    assert type(beat) is RoleBudget
    assert beat.per_process == 1
    assert plan.total == 12
    assert "ElasticBudget(plan='lab', role='worker', limit=11" in repr(worker)


def test_static_plans_are_unchanged() -> None:
    plan = BudgetPlan(50, {"web": Role(processes=2, weight=3), "content": Role(processes=6)})
    assert not plan.elastic
    assert plan.elastic_limit == 0
    assert plan.budget_for("web").per_process == 11  # 45 usable × 3 / (2 × 3 + 6)
    assert plan.to_mapping()["roles"]["web"] == {
        "processes": 2,
        "loops": 1,
        "weight": 3,
        "minimum": 0,
    }


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"loops": 4}, ValueError, "elastic role takes one lease per connection"),
        ({"minimum": 2}, ValueError, "no per-process minimum"),
        ({"processes": 2, "priority": 1}, ValueError, "order elastic roles only"),
        ({"processes": 2, "headroom": 1}, ValueError, "order elastic roles only"),
        ({"priority": -1}, ValueError, "must be >= 0"),
        ({"headroom": -2}, ValueError, "must be >= 0"),
        ({"priority": 1.5}, TypeError, "Role.priority must be an int"),
        ({"headroom": "2"}, TypeError, "Role.headroom must be an int"),
        ({"priority": True}, TypeError, "Role.priority must be an int"),
        ({"processes": 0}, ValueError, "leave processes out for an elastic role"),
        ({"processes": 2.0}, TypeError, "or None for an elastic role"),
    ],
)
def test_invalid_roles_are_refused(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Role(**options)


def test_a_headroom_that_leaves_a_role_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'worker' has headroom=4 .* only 4 connections.*≤ 3"):
        BudgetPlan(4, {"api": Role(priority=1), "worker": Role(headroom=4)}, 0, ledger="redis://x")


def test_static_roles_that_take_everything_leave_the_elastic_ones_nothing() -> None:
    with pytest.raises(ValueError, match="leaves nothing for its elastic roles"):
        BudgetPlan(4, {"beat": Role(processes=4), "api": Role()}, 0, ledger="redis://x")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "has space"}, "key namespace"),
        ({"name": "{x}"}, "key namespace"),
        ({"name": ""}, "key namespace"),
        ({"ledger": "http://host"}, "the Redis holding the elastic ledger"),
        ({"ledger": "http://:secret@host"}, r"http://:\*\*\*@host"),
    ],
)
def test_plan_name_and_ledger_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        BudgetPlan(4, {"api": Role()}, 0, **options)
    assert "secret" not in str(caught.value)


def test_the_ledger_url_comes_from_the_plan_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOOPSAFE_LEDGER_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    plan = BudgetPlan(4, {"api": Role(), "beat": Role(processes=1)}, 0)
    assert plan.budget_for("beat").per_process == 1  # a static role needs no ledger
    with pytest.raises(ValueError, match="or set LOOPSAFE_LEDGER_URL"):
        plan.budget_for("api")
    monkeypatch.setenv("REDIS_URL", "redis://from-redis-url:6379/0")
    assert plan.ledger_url == "redis://from-redis-url:6379/0"
    monkeypatch.setenv("LOOPSAFE_LEDGER_URL", "redis://from-ledger-url:6379/1")
    assert plan.ledger_url == "redis://from-ledger-url:6379/1"
    assert BudgetPlan(4, {"api": Role()}, 0, ledger="redis://given").ledger_url == "redis://given"
    monkeypatch.setenv("LOOPSAFE_LEDGER_URL", "http://nope")
    with pytest.raises(ValueError, match=r"\$LOOPSAFE_LEDGER_URL must be a Redis URL"):
        plan.budget_for("api")


CONTRACT = {
    "max_connections": 12,
    "reserve": 0,
    "ledger": "redis://127.0.0.1:6379/0",
    "name": "lab",
    "roles": {
        "api": {"priority": 10},
        "worker": {"priority": 0, "headroom": 2},
        "beat": {"processes": 1},
    },
}


def test_the_json_form_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPSAFE_BUDGET_PLAN", json.dumps(CONTRACT))
    plan = BudgetPlan.from_env()
    assert (plan.name, plan.ledger, plan.elastic_limit) == ("lab", CONTRACT["ledger"], 11)
    assert plan.roles["worker"] == Role(priority=0, headroom=2)
    assert BudgetPlan.from_mapping(plan.to_mapping()) == plan
    with pytest.raises(ValueError, match="role 'api' must be an object"):
        BudgetPlan.from_mapping({**CONTRACT, "roles": {"api": 3}})
    with pytest.raises(ValueError, match="unknown budget plan keys: ledgr"):
        BudgetPlan.from_mapping({**CONTRACT, "ledgr": "redis://x"})


def test_the_cli_prints_elastic_roles(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["budget", "--plan", json.dumps(CONTRACT)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"api\s+elastic\s+-\s+1\s+-\s+-\s+≤11", out)
    assert re.search(r"worker\s+0\s+2\s+≥3 free\s+9", out)
    assert "share 11 connections through the ledger 'lab'" in out


# -- one process, real PostgreSQL and Redis ----------------------------------------------------


def elastic_plan(redis_url: str, limit: int, **roles: Role) -> BudgetPlan:
    """A plan of `limit` connections on its own ledger namespace."""
    return BudgetPlan(limit, roles, 0, ledger=redis_url, name=f"t{uuid.uuid4().hex[:10]}")


def ledger(db: Database) -> Mapping[str, Any]:
    return db.pool_status()["ledger"]


async def eventually(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait until `check()` holds (the ledger view refreshes with each heartbeat)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _sessions(
    db: Database, count: int, hold: float, slots: int = 0, scope: str = ""
) -> list[BaseException]:
    async def one() -> None:
        async with db.session() as session:
            if slots:
                await claim_slot(session, slots, scope)
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": hold})

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]


@pytest.mark.redis
@pytest.mark.parametrize("elastic", [True, False])
async def test_behind_a_transaction_pooler_the_role_never_holds_more_than_limit_less_headroom(
    postgres_url: str, redis_url: str, db_name: str, elastic: bool
) -> None:
    """40 concurrent transactions, limit 5, headroom 2: never more than 3 open at once."""
    plan = elastic_plan(redis_url, 5, api=Role(priority=1), worker=Role(headroom=2))
    if elastic:
        db = Database(
            postgres_url, name=db_name, budget=plan.budget_for("worker"), pooler="transaction"
        )
    else:  # control: an ordinary pool of 8 goes past 3
        db = Database(postgres_url, name=db_name, engine_options={"pool_size": 8})
    errors = await _sessions(db, 40, 0.02, slots=3, scope=plan.name)
    await db.aclose()
    if elastic:
        assert errors == []
        status = ledger(db)
        assert status["served_at_once"] + status["served_after_wait"] == 40
        assert status["served_after_wait"] > 0  # the limit really did bite
    else:
        assert any("every slot was taken" in str(error) for error in errors), errors


@pytest.mark.redis
async def test_directly_on_the_server_a_lease_lasts_while_the_connection_is_open(
    postgres_url: str, redis_url: str, db_name: str
) -> None:
    """Two roles, 30 sessions each, against a server role that allows 4 connections."""
    plan = elastic_plan(redis_url, 4, api=Role(priority=1), worker=Role(headroom=1))
    async with limited_role(postgres_url, 4) as url:
        api = Database(url, name=f"{db_name}a", budget=plan.budget_for("api"))
        worker = Database(url, name=f"{db_name}w", budget=plan.budget_for("worker"))
        errors = await asyncio.gather(_sessions(worker, 30, 0.02), _sessions(api, 30, 0.02))
        assert ledger(worker)["held"] <= 1  # one warm connection per loop keeps its lease
        await api.aclose()
        await worker.aclose()
        assert ledger(worker)["held"] == ledger(api)["held"] == 0
    assert list(errors) == [[], []]
    assert not any(TOO_MANY in str(error) for error in errors)


@pytest.mark.redis
@pytest.mark.parametrize("headroom", [1, 0])
async def test_the_api_is_served_at_once_while_workers_saturate(
    postgres_url: str, redis_url: str, db_name: str, headroom: int
) -> None:
    plan = elastic_plan(redis_url, 4, api=Role(priority=10), worker=Role(headroom=headroom))
    worker = Database(
        postgres_url, name=f"{db_name}w", budget=plan.budget_for("worker"), pooler="transaction"
    )
    api = Database(
        postgres_url, name=f"{db_name}a", budget=plan.budget_for("api"), pooler="transaction"
    )
    async with worker.session():  # past a new ledger's settling, which holds every role
        pass
    # Workers hold every connection they may take, for a second, with more of them waiting.
    load = asyncio.ensure_future(_sessions(worker, 8, 1.0))
    await eventually(
        lambda: (
            ledger(worker)["in_use"]["worker"] == 4 - headroom
            and ledger(worker)["waiting"]["worker"] > 0
        )
    )
    for _ in range(10):
        async with api.session() as session:
            await session.execute(text("SELECT 1"))
    assert await load == []
    status = ledger(api)
    if headroom:
        # Workers use every connection but the one kept for the API, which never waits.
        assert (status["served_at_once"], status["served_after_wait"]) == (10, 0)
    else:  # control: without headroom the API waits for a worker to finish
        assert status["served_after_wait"] >= 1
    await api.aclose()
    await worker.aclose()


@pytest.mark.redis
async def test_a_higher_role_is_served_before_workers_already_waiting(
    postgres_url: str, redis_url: str, db_name: str
) -> None:
    plan = elastic_plan(redis_url, 2, api=Role(priority=10), worker=Role())
    options = {"pool_timeout": 60}
    worker = Database(
        postgres_url,
        name=f"{db_name}w",
        budget=plan.budget_for("worker"),
        pooler="transaction",
        engine_options=options,
    )
    api = Database(
        postgres_url, name=f"{db_name}a", budget=plan.budget_for("api"), pooler="transaction"
    )
    served: list[str] = []

    async def one(db: Database, who: str) -> None:
        async with db.session() as session:
            served.append(who)
            await session.execute(text("SELECT pg_sleep(0.1)"))

    load = asyncio.gather(*(one(worker, f"w{n}") for n in range(12)))
    await eventually(lambda: ledger(worker)["waiting"].get("worker", 0) >= 8)
    before = len(served)
    await one(api, "api")
    await load
    # Two connections, both busy: the API takes the first one given back, not a later one.
    assert served.index("api") <= before + 1, served
    await api.aclose()
    await worker.aclose()


@pytest.mark.redis
async def test_waiting_beyond_pool_timeout_names_the_plan_and_role(
    postgres_url: str, redis_url: str, db_name: str
) -> None:
    plan = elastic_plan(redis_url, 1, worker=Role())
    # A brand-new ledger grants nothing for a lease (3 s) while holders re-register: wait it out
    # with the default pool_timeout, through the same plan and role.
    warm = Database(
        postgres_url, name=f"{db_name}w", budget=plan.budget_for("worker"), pooler="transaction"
    )
    async with warm.session():
        pass
    await warm.aclose()
    db = Database(
        postgres_url,
        name=db_name,
        budget=plan.budget_for("worker"),
        pooler="transaction",
        engine_options={"pool_timeout": 1.0},
    )
    async with db.session():
        with pytest.raises(PoolExhaustedError) as caught:
            async with db.session():
                pass
    message = str(caught.value)
    assert f"elastic role 'worker' of BudgetPlan '{plan.name}' shares 1 connections" in message
    assert "pool_timeout=1 s" in message
    async with db.session() as session:  # the lease came back
        await session.execute(text("SELECT 1"))
    await db.aclose()


@pytest.mark.redis
async def test_pool_status_and_the_prometheus_collector_show_the_ledger(
    postgres_url: str, redis_url: str, db_name: str
) -> None:
    plan = elastic_plan(redis_url, 5, api=Role(priority=1), worker=Role(headroom=2))
    db = Database(
        postgres_url, name=db_name, budget=plan.budget_for("worker"), pooler="transaction"
    )
    async with db.session():
        await eventually(lambda: ledger(db)["in_use"].get("worker") == 1)
        status = db.pool_status()
        assert status["capacity"] == 3
        assert status["ledger"] == {
            "plan": plan.name,
            "role": "worker",
            "mode": "ledger",
            "limit": 5,
            "held": 1,
            # A brand-new ledger settles for a lease before its first grant (see the docs).
            "served_at_once": 0,
            "served_after_wait": 1,
            "fallback_share": 5,  # the only live process of the plan would take it all
            "in_use": {"api": 0, "worker": 1},
            "waiting": {"api": 0, "worker": 0},
            "members": {"api": 0, "worker": 1},
            "headroom": {"api": 0, "worker": 2},
        }
        registry = CollectorRegistry()
        db_metrics.register(registry)
        labels = {"plan": plan.name, "role": "worker"}
        assert registry.get_sample_value("loopsafe_db_ledger_in_use", labels) == 1
        assert registry.get_sample_value("loopsafe_db_ledger_waiting", labels) == 0
        assert registry.get_sample_value("loopsafe_db_ledger_headroom", labels) == 2
        assert registry.get_sample_value("loopsafe_db_ledger_limit", {"plan": plan.name}) == 5
    await db.aclose()


@pytest.mark.redis
async def test_a_forked_child_takes_its_own_leases_and_never_touches_the_parents(
    postgres_url: str, redis_url: str, db_name: str
) -> None:
    plan = elastic_plan(redis_url, 3, worker=Role())
    db = Database(
        postgres_url, name=db_name, budget=plan.budget_for("worker"), pooler="transaction"
    )

    def child() -> dict[str, Any]:
        async def use() -> dict[str, Any]:
            inherited = ledger(db)["held"]
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
                held = ledger(db)["held"]
            await db.aclose()
            return {"inherited": inherited, "held": held}

        return asyncio.run(use())

    async with db.session() as session:
        await session.execute(text("SELECT 1"))
        report = await asyncio.to_thread(in_child, child)
        # The child started with none of the parent's leases and took one of its own.
        assert report == {"inherited": 0, "held": 1}
        assert ledger(db)["held"] == 1
        # Its lease went back; the parent's is still counted, once.
        await eventually(
            lambda: ledger(db)["in_use"]["worker"] == 1 and ledger(db)["members"]["worker"] >= 1
        )
    await eventually(lambda: ledger(db)["in_use"]["worker"] == 0)
    await db.aclose()


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


@pytest.mark.redis
async def test_the_ledger_threads_end_once_no_database_uses_the_ledger(
    postgres_url: str, redis_url: str, db_name: str
) -> None:
    """The heartbeat and the wake-up listener of a process outlive no Database of the ledger."""
    plan = elastic_plan(redis_url, 1, worker=Role())
    db = Database(
        postgres_url, name=db_name, budget=plan.budget_for("worker"), pooler="transaction"
    )
    heartbeat = f"loopsafe.db ledger {plan.name}/worker"
    async with db.session() as session:
        await session.execute(text("SELECT 1"))
    assert {heartbeat, "loopsafe.db ledger wake-ups"} <= _threads()
    await db.aclose()
    del db, session

    def gone() -> bool:
        gc.collect()
        return not {heartbeat, "loopsafe.db ledger wake-ups"} & _threads()

    await eventually(gone)


@pytest.mark.redis
async def test_a_waiter_cancelled_as_its_turn_comes_leaks_no_lease(
    postgres_url: str, redis_url: str, db_name: str
) -> None:
    """Cancelled just as the connection it waits for is given back (and handed to it): the
    grant it never takes goes back, so nothing stays in use and the next checkout is served."""
    plan = elastic_plan(redis_url, 1, worker=Role())
    db = Database(
        postgres_url, name=db_name, budget=plan.budget_for("worker"), pooler="transaction"
    )

    async def one() -> None:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))

    for _ in range(5):
        holding = db.session()
        session = await holding.__aenter__()
        await session.execute(text("SELECT 1"))
        waiter = asyncio.ensure_future(one())
        await eventually(lambda: ledger(db)["waiting"]["worker"] == 1)
        waiter.cancel()
        await holding.__aexit__(None, None, None)
        with pytest.raises(asyncio.CancelledError):
            await waiter
    await eventually(
        lambda: ledger(db)["in_use"]["worker"] == 0 and ledger(db)["waiting"]["worker"] == 0
    )
    assert ledger(db)["held"] == 0
    await asyncio.wait_for(one(), 10)  # the one connection is free again
    await db.aclose()
