"""PoolBudget: the arithmetic of sharing a connection limit, its validation and its env form."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopsafe.db import PoolBudget


def test_budget_splits_usable_connections_between_all_loops() -> None:
    budget = PoolBudget(max_connections=50, processes=13)
    assert budget.usable == 45
    assert budget.per_loop == 3
    assert (budget.pool_size, budget.max_overflow) == (2, 1)
    assert budget.per_process == 3
    assert budget.total == 39


def test_budget_gives_each_loop_of_a_process_its_share() -> None:
    budget = PoolBudget(max_connections=100, processes=2, loops_per_process=4, reserve=0.2)
    assert budget.usable == 80
    assert (budget.pool_size, budget.max_overflow, budget.per_process) == (5, 5, 40)


def test_reserve_is_applied_to_the_decimal_the_user_wrote() -> None:
    # 100 × (1 − 0.43) is 56.99999999999999 in floats; the user meant 57.
    assert PoolBudget(max_connections=100, processes=1, reserve=0.43).usable == 57


def test_budget_is_frozen() -> None:
    budget = PoolBudget(max_connections=10, processes=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.processes = 2  # type: ignore[misc]


def test_infeasible_budget_says_what_would_fit() -> None:
    with pytest.raises(ValueError, match=r"only 18 of 20 are usable") as caught:
        PoolBudget(max_connections=20, processes=6, loops_per_process=4)
    message = str(caught.value)
    assert "at most 18 loops in total" in message
    assert "loops_per_process≤3" in message
    assert "max_connections≥27" in message
    # What the message proposes does fit.
    PoolBudget(max_connections=20, processes=6, loops_per_process=3)
    PoolBudget(max_connections=27, processes=6, loops_per_process=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_connections": 0, "processes": 1}, ValueError, "max_connections must be an int >= 1"),
        ({"max_connections": 10, "processes": 0}, ValueError, "processes must be an int >= 1"),
        (
            {"max_connections": 10, "processes": 1, "loops_per_process": 0},
            ValueError,
            "loops_per_process must be an int >= 1",
        ),
        ({"max_connections": 10, "processes": True}, TypeError, "processes must be an int"),
        ({"max_connections": 10, "processes": 1, "reserve": float("nan")}, ValueError, "got nan"),
        ({"max_connections": 10, "processes": 1, "reserve": float("inf")}, ValueError, "got inf"),
        ({"max_connections": 10, "processes": 1, "reserve": True}, TypeError, "reserve must be"),
        ({"max_connections": 10, "processes": 1, "reserve": 1.0}, ValueError, r"\[0, 1\)"),
        ({"max_connections": 10, "processes": 1, "reserve": -0.1}, ValueError, r"\[0, 1\)"),
        ({"max_connections": 10.5, "processes": 1}, TypeError, "max_connections must be an int"),
        ({"max_connections": True, "processes": 1}, TypeError, "must be an int"),
        ({"max_connections": 10, "processes": 1, "reserve": "0.1"}, TypeError, "reserve must be"),
    ],
)
def test_invalid_budgets_are_rejected(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PoolBudget(**kwargs)  # type: ignore[arg-type]


@given(
    max_connections=st.integers(1, 5000),
    processes=st.integers(1, 300),
    loops=st.integers(1, 64),
    reserve=st.sampled_from([0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.43, 0.5, 0.9, 0.99]),
)
def test_budget_never_exceeds_its_promise(
    max_connections: int, processes: int, loops: int, reserve: float
) -> None:
    """Either every loop gets ≥1 connection and the total fits, or ValueError with a fix."""
    allowed = Fraction(max_connections) * (1 - Fraction(str(reserve)))
    if processes * loops > allowed:  # not even one connection per loop
        with pytest.raises(ValueError, match="What would fit"):
            PoolBudget(max_connections, processes, loops, reserve)
        return
    budget = PoolBudget(max_connections, processes, loops, reserve)
    per_loop = budget.pool_size + budget.max_overflow
    assert budget.pool_size >= 1
    assert budget.max_overflow >= 0
    assert processes * loops * per_loop <= allowed
    assert budget.total == processes * budget.per_process <= allowed
    # Nothing is wasted: one more connection per loop would break the promise.
    assert processes * loops * (per_loop + 1) > budget.usable


def test_from_env_reads_the_three_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_MAX_CONNECTIONS", "60")
    monkeypatch.setenv("LOOPSAFE_PROCESSES", "5")
    monkeypatch.setenv("LOOPSAFE_LOOPS_PER_PROCESS", "2")
    monkeypatch.delenv("LOOPSAFE_DB_RESERVE", raising=False)
    assert PoolBudget.from_env() == PoolBudget(60, 5, 2, 0.1)
    monkeypatch.setenv("LOOPSAFE_DB_RESERVE", "0.2")
    monkeypatch.delenv("LOOPSAFE_LOOPS_PER_PROCESS")
    assert PoolBudget.from_env() == PoolBudget(60, 5, 1, 0.2)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"LOOPSAFE_PROCESSES": "2"}, "needs DATABASE_MAX_CONNECTIONS"),
        ({"DATABASE_MAX_CONNECTIONS": "20"}, "needs LOOPSAFE_PROCESSES"),
        (
            {"DATABASE_MAX_CONNECTIONS": "lots", "LOOPSAFE_PROCESSES": "2"},
            "whole number, got 'lots'",
        ),
        (
            {
                "DATABASE_MAX_CONNECTIONS": "20",
                "LOOPSAFE_PROCESSES": "2",
                "LOOPSAFE_DB_RESERVE": "x",
            },
            "LOOPSAFE_DB_RESERVE must be a fraction",
        ),
        ({"DATABASE_MAX_CONNECTIONS": "2", "LOOPSAFE_PROCESSES": "5"}, "What would fit"),
    ],
)
def test_from_env_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    for name in (
        "DATABASE_MAX_CONNECTIONS",
        "LOOPSAFE_PROCESSES",
        "LOOPSAFE_LOOPS_PER_PROCESS",
        "LOOPSAFE_DB_RESERVE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        PoolBudget.from_env()
