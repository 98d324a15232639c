"""Fixtures for the bridge's tests: every test starts and ends without run_async loops."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from loopsafe import close_all_loops


@pytest.fixture(autouse=True)
def _fresh_run_async_loops() -> Iterator[None]:
    """Every test starts without run_async loops and leaves none behind (closed cleanly).

    The Celery tests use it too (imported into their conftest).
    """
    close_all_loops()
    yield
    close_all_loops()


def eventually(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Wait until `condition()` holds; fail the test naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(0.01)
