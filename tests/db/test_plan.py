"""BudgetPlan: weighted role shares, protected minimums, the whole-deployment promise, env form."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopsafe.db import BudgetPlan, Database, PoolBudget, Role, RoleBudget

SEED = {"web": Role(processes=4), "content": Role(processes=6), "workflow": Role(processes=4)}


def test_equal_weights_split_like_a_pool_budget_over_all_processes() -> None:
    plan = BudgetPlan(50, SEED)
    shared = PoolBudget(max_connections=50, processes=14)
    for name in SEED:
        budget = plan.budget_for(name)
        assert (budget.pool_size, budget.max_overflow) == (shared.pool_size, shared.max_overflow)
    assert plan.total == shared.total


def test_weight_gives_each_web_process_a_larger_protected_share() -> None:
    plan = BudgetPlan(50, {**SEED, "web": Role(processes=2, weight=4)}, reserve=0.1)
    web, content = plan.budget_for("web"), plan.budget_for("content")
    # 45 usable over 2 × 4 + 6 + 4 = 18 units of weight: 2.5 per unit.
    assert (web.per_process, content.per_process) == (10, 2)
    assert (web.pool_size, web.max_overflow) == (5, 5)
    assert isinstance(web, PoolBudget)
    assert web.role == "web"
    assert web.total == 20


def test_minimum_is_guaranteed_and_taken_from_the_other_roles() -> None:
    plan = BudgetPlan(56, {"web": Role(2, minimum=8), "workers": Role(10, loops=2)}, reserve=0)
    # By weight alone a web process would get 56 / 12 = 4; its minimum 8 comes first.
    assert plan.budget_for("web").per_process == 8
    assert plan.budget_for("workers").per_loop == 2  # (56 − 16) / 10 processes / 2 loops
    assert plan.total <= plan.usable


def test_role_budget_caps_a_database_to_its_share() -> None:
    budget = BudgetPlan(20, {"web": Role(1, weight=3), "worker": Role(1)}).budget_for("web")
    database = Database("postgresql://u@localhost/db", budget=budget)
    assert database.budget is budget
    assert budget.per_process == 13  # 18 usable × 3/4, floored


def test_infeasible_plan_says_what_would_fit() -> None:
    with pytest.raises(ValueError, match=r"need 36 connections.*max_connections ≥ 40"):
        BudgetPlan(10, {"web": Role(4), "workers": Role(4, loops=8)})
    assert BudgetPlan(40, {"web": Role(4), "workers": Role(4, loops=8)}).total == 36


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Role(0), ValueError, "at least 1"),
        (lambda: Role(1, loops=0), ValueError, "at least 1"),
        (lambda: Role(1, weight=0), ValueError, "weight must be a finite number > 0"),
        (lambda: Role(1, weight=float("nan")), ValueError, "finite"),
        (lambda: Role(1, weight=cast(Any, "2")), TypeError, "weight must be a number"),
        (lambda: Role(1, minimum=-1), ValueError, "minimum must be >= 0"),
        (lambda: Role(cast(Any, 1.5)), TypeError, "processes must be an int"),
        (lambda: BudgetPlan(50, {}), ValueError, "at least one role"),
        (lambda: BudgetPlan(50, {"web": cast(Any, 2)}), TypeError, "must be a Role"),
        (lambda: BudgetPlan(50, {"": Role(1)}), ValueError, "non-empty strings"),
        (lambda: BudgetPlan(0, {"web": Role(1)}), ValueError, "max_connections must be at least 1"),
        (lambda: BudgetPlan(50, {"web": Role(1)}, reserve=1), ValueError, r"\[0, 1\)"),
        (lambda: RoleBudget(10, 2, role="web", loop_share=9), ValueError, "loop_share=9"),
    ],
)
def test_bad_plans_raise_clear_errors(make: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]


def test_budget_for_reads_loopsafe_role(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = BudgetPlan(50, SEED)
    monkeypatch.setenv("LOOPSAFE_ROLE", "content")
    assert plan.budget_for().role == "content"
    monkeypatch.setenv("LOOPSAFE_ROLE", "api")
    with pytest.raises(ValueError, match="role 'api' is not in the budget plan"):
        plan.budget_for()
    monkeypatch.delenv("LOOPSAFE_ROLE")
    with pytest.raises(ValueError, match="set LOOPSAFE_ROLE to one of web, content, workflow"):
        plan.budget_for()


def test_from_env_reads_inline_json_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = BudgetPlan(50, {"web": Role(2, weight=3, minimum=4), "content": Role(6, loops=2)})
    monkeypatch.setenv("LOOPSAFE_BUDGET_PLAN", json.dumps(plan.to_mapping()))
    assert BudgetPlan.from_env() == plan
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_mapping()))
    monkeypatch.setenv("LOOPSAFE_BUDGET_PLAN", str(path))
    assert BudgetPlan.from_env().budget_for("web") == plan.budget_for("web")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "needs LOOPSAFE_BUDGET_PLAN"),
        ("/nonexistent/plan.json", "names the file '/nonexistent/plan.json', which cannot be read"),
        ("{oops", "LOOPSAFE_BUDGET_PLAN is not valid JSON"),
        ('{"roles": {"web": {"processes": 1}}}', 'needs "max_connections"'),
        ('{"max_connections": 5}', 'an object with "max_connections" and "roles"'),
        ('{"max_connections": 5, "roles": {}, "pools": 1}', "unknown budget plan keys: pools"),
        ('{"max_connections": 5, "roles": {"web": {"procs": 1}}}', "role 'web': .*procs"),
    ],
)
def test_from_env_errors_name_the_problem(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("LOOPSAFE_BUDGET_PLAN", value)
    with pytest.raises(ValueError, match=message):
        BudgetPlan.from_env()


roles = st.builds(
    Role,
    processes=st.integers(1, 12),
    loops=st.integers(1, 6),
    weight=st.floats(0.1, 20, allow_nan=False),
    minimum=st.integers(0, 12),
)


@given(
    max_connections=st.integers(1, 600),
    reserve=st.sampled_from([0, 0.05, 0.1, 0.25, 0.43]),
    plan_roles=st.dictionaries(
        st.sampled_from(["web", "content", "workflow", "logs"]), roles, min_size=1
    ),
)
def test_the_whole_deployment_never_exceeds_usable_and_minimums_hold(
    max_connections: int, reserve: float, plan_roles: dict[str, Role]
) -> None:
    floors = sum((r.processes or 0) * r.loops * r.floor_per_loop for r in plan_roles.values())
    if floors > math.floor(max_connections * (1 - Fraction(str(reserve)))):
        # Refused exactly when the guaranteed minimums do not fit.
        with pytest.raises(ValueError, match="What would fit"):
            BudgetPlan(max_connections, plan_roles, reserve)
        return
    plan = BudgetPlan(max_connections, plan_roles, reserve)
    total = 0
    for name, role in plan_roles.items():
        budget = plan.budget_for(name)
        assert budget.per_loop >= role.floor_per_loop
        assert budget.pool_size + budget.max_overflow == budget.per_loop
        assert budget.per_process >= role.minimum
        assert role.processes is not None
        total += role.processes * budget.per_process
    assert total == plan.total <= plan.usable
    # The smallest limit that fits, as error messages propose it, is exact.
    smallest = plan.minimum_max_connections()
    assert BudgetPlan(smallest, plan_roles, reserve).total <= smallest
    if smallest > 1:
        with pytest.raises(ValueError, match="What would fit"):
            BudgetPlan(smallest - 1, plan_roles, reserve)
    # Priority: among roles without a binding minimum, more weight never means a smaller share.
    free = [n for n, r in plan_roles.items() if plan.budget_for(n).per_loop > r.floor_per_loop]
    for a in free:
        for b in free:
            ra, rb = plan_roles[a], plan_roles[b]
            if ra.loops == rb.loops and ra.weight > rb.weight:
                assert plan.budget_for(a).per_loop >= plan.budget_for(b).per_loop
