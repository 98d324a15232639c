"""Checks for the numbers public parameters take: seconds and counts, with messages naming them."""

from __future__ import annotations

import math

from ._errors import ConfigurationError, ConfigurationTypeError

__all__ = ("count", "seconds")


def seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return `value` as a float if it is a finite number of seconds > 0 (>= 0 with `allow_zero`).

    Raises `ConfigurationTypeError` for bools and non-numbers (``True`` is not one second),
    `ConfigurationError` for
    NaN, infinities and values too small; both messages name the parameter `name`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationTypeError(
            f"{name} must be a number of seconds, got {value!r} ({type(value).__name__})"
        )
    bound = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}"
        )
    return float(value)


def count(name: str, value: object, *, minimum: int = 0) -> int:
    """Return `value` if it is an int >= `minimum`.

    Raises `ConfigurationTypeError` for bools, floats and non-numbers, `ConfigurationError` below
    `minimum` (a `TypeError` and a `ValueError` as before); both
    messages name the parameter `name`.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationTypeError(
            f"{name} must be an int, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
