"""loopsafe.llm's exception, defined with the others in loopsafe._errors."""

from __future__ import annotations

from .._errors import LimitTimeoutError

__all__ = ("LimitTimeoutError",)
