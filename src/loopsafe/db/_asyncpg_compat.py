"""The private parts of asyncpg loopsafe relies on, in one place, checked against each release.

Private names used: ``Connection._transport`` (the asyncio transport under a connection) and
``Connection._aborted`` (what ``is_closed()`` and the finalizer read). Checked against asyncpg
0.32.0; tests/db/test_compat.py fails loudly if a release moves either.
"""

from __future__ import annotations

from typing import Any

__all__ = ("is_asyncpg", "mark_aborted", "transport_of")


def is_asyncpg(driver: object) -> bool:
    """Whether `driver` is an asyncpg connection (without importing asyncpg)."""
    return type(driver).__module__.startswith("asyncpg")


def transport_of(driver: Any) -> Any:
    """The asyncio transport of an asyncpg connection (None once it is gone)."""
    return getattr(driver, "_transport", None)


def mark_aborted(driver: Any) -> None:
    """Make asyncpg treat `driver` as closed, so its finalizer neither warns nor terminates."""
    driver._aborted = True
