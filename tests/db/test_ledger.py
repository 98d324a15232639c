"""The ledger's Lua scripts against a real Redis, step by step beside a model of the rules.

Every ask is predicted from the model (limit, headroom, higher roles waiting, first come first
served within a role) and must get exactly the predicted answer; every release hands free
connections to the waiters the model says, and each waiter's process hears of its grant on its
wake-up channel; after every step the ledger's counts equal the model's leases and never exceed
the limit — through releases, abandoned places in line, processes that die, and a wiped ledger
whose holders re-register.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from loopsafe.db._ledger import WAKE_CHANNEL, Ledger

from ..conftest import FULL_TIER

pytestmark = pytest.mark.redis

LIMIT = 5
PRIORITY = {"api": 10, "mid": 5, "worker": 0}
HEADROOM = {"api": 0, "mid": 1, "worker": 2}
#: Owners are ``<process token>.<id>``: o2 and o3 are keepers of one process p2 (one channel).
OWNERS = {"p0.o0": "api", "p1.o1": "mid", "p2.o2": "worker", "p2.o3": "worker"}
ROLES = tuple(PRIORITY)
T = TypeVar("T")


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def test_the_ledger_follows_its_rules_step_by_step(redis_url: str, sync_redis: redis.Redis) -> None:
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.client = Redis.from_url(redis_url)
            # Long lease and waiter lifetimes: nothing expires by itself during a run.
            ranks = [(role, PRIORITY[role], HEADROOM[role]) for role in ROLES]
            self.ledger = Ledger.for_plan(
                f"m{uuid.uuid4().hex[:10]}", LIMIT, ranks, lease=600, grace=0.001, waiter=600
            )
            self.held: dict[str, str] = {}  # ticket → role
            self.queues: dict[str, list[str]] = {role: [] for role in ROLES}
            self.issued = dict.fromkeys(OWNERS, 0)
            self.pushed: set[str] = set()  # granted to a waiter by someone else's script
            self.wake = sync_redis.pubsub(ignore_subscribe_messages=True)
            self.wake.subscribe(*(WAKE_CHANNEL + owner.split(".")[0] for owner in OWNERS))
            # A fresh ledger settles once (1 ms here) before its first grant.
            self._run(self.ledger.acquire(self.client, "p0.o0", "api", "p0.o0:0"))
            self.loop.run_until_complete(asyncio.sleep(0.005))
            self._run(self.ledger.release(self.client, "p0.o0", "api", "p0.o0:0"))

        def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
            return self.loop.run_until_complete(coroutine)

        def teardown(self) -> None:
            self.wake.close()
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()

        def _hand_out(self, asker: str | None = None) -> None:
            """Free connections go to the heads of the lines, highest priority first."""
            ahead = 0
            for role in ROLES:  # distinct priorities, highest first
                queue = self.queues[role]
                while queue and LIMIT - len(self.held) - HEADROOM[role] - ahead > 0:
                    ticket = queue.pop(0)
                    self.held[ticket] = role
                    if ticket != asker:
                        self.pushed.add(ticket)
                ahead += len(queue)

        def _ask(self, owner: str, ticket: str) -> None:
            role = OWNERS[owner]
            if ticket not in self.queues[role]:
                self.queues[role].append(ticket)
            self._hand_out(ticket)
            granted = self._run(self.ledger.acquire(self.client, owner, role, ticket))
            assert granted == (ticket in self.held), (ticket, self.held, self.queues)

        @rule(owner=st.sampled_from(sorted(OWNERS)))
        def ask(self, owner: str) -> None:
            self.issued[owner] += 1
            self._ask(owner, f"{owner}:{self.issued[owner]}")

        @precondition(lambda self: any(self.queues.values()))
        @rule(data=st.data())
        def ask_again(self, data: st.DataObject) -> None:
            waiting = sorted(t for queue in self.queues.values() for t in queue)
            ticket = data.draw(st.sampled_from(waiting))
            self._ask(ticket.split(":")[0], ticket)

        @precondition(lambda self: bool(self.held))
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            ticket = data.draw(st.sampled_from(sorted(self.held)))
            role = self.held.pop(ticket)
            owner = ticket.split(":")[0]
            self._run(self.ledger.release(self.client, owner, role, ticket))
            self._hand_out()

        @precondition(lambda self: any(self.queues.values()))
        @rule(data=st.data())
        def give_up_waiting(self, data: st.DataObject) -> None:
            waiting = sorted(t for queue in self.queues.values() for t in queue)
            ticket = data.draw(st.sampled_from(waiting))
            owner = ticket.split(":")[0]
            self.queues[OWNERS[owner]].remove(ticket)
            self._run(self.ledger.release(self.client, owner, OWNERS[owner], ticket))
            self._hand_out()  # a higher role's waiter gone may let a lower one in

        @rule(owner=st.sampled_from(sorted(OWNERS)))
        def process_dies(self, owner: str) -> None:
            self.ledger.leave(sync_redis, owner)
            for ticket in [t for t in self.held if t.startswith(f"{owner}:")]:
                del self.held[ticket]
            for queue in self.queues.values():  # its waiters died with it
                queue[:] = [t for t in queue if not t.startswith(f"{owner}:")]
            self._hand_out()

        @rule()
        def ledger_wiped_then_holders_report(self) -> None:
            for key in sync_redis.scan_iter(f"{self.ledger.prefix}:*"):
                sync_redis.delete(key)
            for queue in self.queues.values():
                queue.clear()  # waiters ask again and queue anew
            self.loop.run_until_complete(asyncio.sleep(0.005))  # the 1 ms settling passes
            for owner, role in OWNERS.items():
                mine = [t for t in self.held if t.startswith(f"{owner}:")]
                view = self.ledger.heartbeat(
                    sync_redis, owner, role, self.issued[owner], mine, mine, ()
                )
                assert view.total <= LIMIT
            self.loop.run_until_complete(asyncio.sleep(0.005))

        @rule(owner=st.sampled_from(sorted(OWNERS)))
        def heartbeat(self, owner: str) -> None:
            mine = [t for t in self.held if t.startswith(f"{owner}:")]
            keep = mine + [t for queue in self.queues.values() for t in queue]
            view = self.ledger.heartbeat(
                sync_redis, owner, OWNERS[owner], self.issued[owner], keep, mine, ()
            )
            assert view.total == len(self.held)
            for role in ROLES:
                assert view.in_use[role] == sum(1 for r in self.held.values() if r == role)
                assert view.waiting[role] == len(self.queues[role])

        @invariant()
        def each_process_hears_of_its_grants(self) -> None:
            heard: set[str] = set()
            while (message := self.wake.get_message(timeout=0.01)) is not None:
                tickets = message["data"].split()
                assert {t.split(".")[0] for t in tickets} == {message["channel"].split(":")[-1]}
                heard.update(tickets)
            assert heard == self.pushed
            self.pushed.clear()

        @invariant()
        def counts_match_and_never_exceed(self) -> None:
            total = int(sync_redis.get(f"{self.ledger.prefix}:total") or 0)
            assert total == len(self.held) <= LIMIT
            assert sync_redis.hgetall(f"{self.ledger.prefix}:leases") == self.held

    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            # The quick tier walks a third as many histories; CI's full tier walks them all.
            max_examples=25 if FULL_TIER else 8,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
