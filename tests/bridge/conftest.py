"""Fixtures for the bridge's tests: every test starts and ends without run_async loops."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loopsafe import close_all_loops


@pytest.fixture(autouse=True)
def _fresh_run_async_loops() -> Iterator[None]:
    """Every test starts without run_async loops and leaves none behind (closed cleanly)."""
    close_all_loops()
    yield
    close_all_loops()
