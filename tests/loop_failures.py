"""What the log of a process loopsafe runs in must never contain: the failures it exists to prevent."""

from __future__ import annotations

#: The loop-affinity failures, leaked resources and lost tasks, as Python and asyncio word them.
LOOP_FAILURES = (
    "different loop",
    "Event loop is closed",
    "another operation is in progress",
    "loopsafe.instance_abandoned",
    "Task exception was never retrieved",
    "was never awaited",
    "unclosed",  # ResourceWarning (shown where the process runs with PYTHONWARNINGS), asyncio's too
)
