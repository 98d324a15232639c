"""The loopsafe.celery package surface: re-exports, and run_async usable without Celery."""

from __future__ import annotations

import subprocess
import sys

import loopsafe.celery


def test_all_lists_exactly_the_public_names_sorted() -> None:
    # isidentifier(): pytest's assertion rewriting adds "@py_builtins" to plugin packages.
    exported = {
        name for name in dir(loopsafe.celery) if not name.startswith("_") and name.isidentifier()
    }
    assert set(loopsafe.celery.__all__) == exported
    assert list(loopsafe.celery.__all__) == sorted(loopsafe.celery.__all__)
    for name in loopsafe.celery.__all__:
        assert getattr(loopsafe.celery, name).__module__ == "loopsafe.celery"


def test_importing_it_does_not_import_celery() -> None:
    """run_async serves any sync code; Celery is imported only by install() and async_task()."""
    code = (
        "import sys, asyncio, loopsafe.celery as c\n"
        "assert c.run_async(asyncio.sleep(0, result=5)) == 5\n"
        "print(sorted(m for m in ('celery', 'kombu', 'billiard') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
