"""The loopsafe.celery package surface: re-exports, and run_async usable without Celery."""

from __future__ import annotations

import subprocess
import sys


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
