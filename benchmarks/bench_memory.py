"""RSS growth over 10,000 sequential `asyncio.run()` loops that each use a loop-local resource.

Goal: flat (< 5 MB). Side by side: no registry at all (baseline), loopsafe, and the home-made
module-level dict keyed by the loop object (keeps every dead loop and its resource alive).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_results

import loopsafe

LOOPS = 10_000


class Resource:
    """Something the size of a small client, bound to its loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray(4096)

    async def aclose(self) -> None:
        self.buffer = bytearray()


def rss_growth(get: Callable[[], object]) -> float:
    async def task() -> None:
        get()
        await asyncio.sleep(0)

    process = psutil.Process()
    for _ in range(200):  # warm-up: allocator pools, caches
        asyncio.run(task())
    gc.collect()
    before = process.memory_info().rss
    for _ in range(LOOPS):
        asyncio.run(task())
    gc.collect()
    return float(process.memory_info().rss - before) / 2**20


def main() -> None:
    local = loopsafe.LoopLocal(Resource, name="bench-memory")
    naive: dict[asyncio.AbstractEventLoop, Resource] = {}

    def naive_get() -> Resource:
        loop = asyncio.get_running_loop()
        if loop not in naive:
            naive[loop] = Resource()
        return naive[loop]

    results = {
        "no registry (baseline)": rss_growth(lambda: None),
        "loopsafe LoopLocal": rss_growth(local.get),
        "dict keyed by loop (home-made)": rss_growth(naive_get),
    }
    growth = results["loopsafe LoopLocal"]
    write_results(
        "memory",
        f"RSS growth over {LOOPS:,} sequential asyncio.run() loops",
        ["variant", "RSS growth (MB)"],
        [[label, f"{mb:.2f}"] for label, mb in results.items()],
        chart_labels=list(results),
        chart_values=list(results.values()),
        chart_xlabel="MB of RSS growth",
        notes=(
            f"Goal: loopsafe flat, < 5 MB; measured {growth:.2f} MB "
            f"({'met' if growth < 5 else 'NOT met'}). Live loopsafe instances at the end: "
            f"{len(local)}; loops kept alive by the home-made dict: {len(naive)}."
        ),
    )


if __name__ == "__main__":
    main()
