"""The shared checks for seconds and counts: what they accept, and the errors naming the parameter."""

from __future__ import annotations

import math

import pytest

from loopsafe._validate import count, seconds


@pytest.mark.parametrize("value", [0.001, 1, 2.5, 10**6])
def test_seconds_accepts_finite_positive_numbers_as_floats(value: float) -> None:
    result = seconds("close_timeout", value)
    assert result == value
    assert type(result) is float


@pytest.mark.parametrize("value", [True, False, "1", None, b"1", [1.0]])
def test_seconds_rejects_bools_and_non_numbers_with_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=r"^close_timeout must be a number of seconds, got "):
        seconds("close_timeout", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, 0.0, -1, -0.5])
def test_seconds_rejects_nan_infinities_and_non_positive_values(value: float) -> None:
    with pytest.raises(
        ValueError, match=r"^pool_timeout must be a finite number of seconds > 0, got "
    ):
        seconds("pool_timeout", value)


def test_seconds_with_allow_zero_takes_zero_but_not_less() -> None:
    assert seconds("reconnect_timeout", 0, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r"reconnect_timeout must be .* >= 0, got -1"):
        seconds("reconnect_timeout", -1, allow_zero=True)
    with pytest.raises(ValueError, match="got nan"):
        seconds("reconnect_timeout", math.nan, allow_zero=True)


@pytest.mark.parametrize(("value", "minimum"), [(0, 0), (3, 0), (1, 1), (10**9, 1)])
def test_count_accepts_ints_at_or_above_the_minimum(value: int, minimum: int) -> None:
    assert count("retries", value, minimum=minimum) == value


@pytest.mark.parametrize("value", [True, False, 1.0, math.nan, "3", None])
def test_count_rejects_bools_floats_and_non_numbers_with_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=r"^connect_retries must be an int, got "):
        count("connect_retries", value)


def test_count_rejects_values_below_the_minimum() -> None:
    with pytest.raises(ValueError, match=r"^retries must be an int >= 0, got -1$"):
        count("retries", -1)
    with pytest.raises(ValueError, match=r"^processes must be an int >= 1, got 0$"):
        count("processes", 0, minimum=1)
