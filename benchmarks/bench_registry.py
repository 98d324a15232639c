"""Cost of a warm `LoopLocal.get()`, as a ratio to `asyncio.get_running_loop()` alone.

Side by side in one run: loopsafe, a WeakKeyDictionary keyed by the loop, a dict keyed by
`id(loop)` (fast but wrong: ids of dead loops are reused), anyio's `RunVar`, and the
`asyncio-loop-local` package's `singleton`. Goal: loopsafe ≤ 2.0×.
"""

from __future__ import annotations

import asyncio
import sys
import timeit
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_results

import loopsafe

NUMBER = 200_000
REPEAT = 7


async def measure() -> dict[str, float]:
    loop = asyncio.get_running_loop()
    value = object()
    local = loopsafe.LoopLocal(lambda: value, name="bench")
    local.get()
    weak: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object] = weakref.WeakKeyDictionary(
        {loop: value}
    )
    by_id = {id(loop): value}
    namespace: dict[str, object] = {
        "get_running_loop": asyncio.get_running_loop,
        "local": local,
        "weak": weak,
        "by_id": by_id,
    }
    statements = {
        "asyncio.get_running_loop() (baseline)": "get_running_loop()",
        "loopsafe LoopLocal.get()": "local.get()",
        "WeakKeyDictionary[loop]": "weak[get_running_loop()]",
        "dict[id(loop)] (wrong: ids are reused)": "by_id[id(get_running_loop())]",
    }
    try:
        from anyio.lowlevel import RunVar

        run_var: RunVar[object] = RunVar("bench")
        run_var.set(value)
        namespace["run_var"] = run_var
        statements["anyio RunVar.get()"] = "run_var.get()"
    except ImportError:  # pragma: no cover - anyio is in the bench extra
        pass
    try:
        import asyncio_loop_local

        @asyncio_loop_local.singleton
        def singleton() -> object:
            return value

        singleton()
        namespace["singleton"] = singleton
        statements["asyncio-loop-local singleton()"] = "singleton()"
    except ImportError:  # pragma: no cover - in the bench extra
        pass
    results: dict[str, float] = {}
    # Interleave rounds so drift on a noisy machine hits every candidate alike.
    for _ in range(REPEAT):
        for label, statement in statements.items():
            seconds = timeit.timeit(statement, globals=namespace, number=NUMBER) / NUMBER
            results[label] = min(results.get(label, float("inf")), seconds)
    return results


def main() -> None:
    results = asyncio.run(measure())
    baseline = results["asyncio.get_running_loop() (baseline)"]
    rows = [
        [label, f"{seconds * 1e9:.0f}", f"{seconds / baseline:.2f}×"]
        for label, seconds in results.items()
    ]
    ratio = results["loopsafe LoopLocal.get()"] / baseline
    write_results(
        "registry",
        "Warm lookup cost per call",
        ["lookup", "ns/call", "× get_running_loop()"],
        rows,
        chart_labels=list(results),
        chart_values=[seconds / baseline for seconds in results.values()],
        chart_xlabel="× asyncio.get_running_loop()",
        notes=(
            f"Goal: loopsafe ≤ 2.0× `get_running_loop()`; measured {ratio:.2f}× "
            f"({'met' if ratio <= 2.0 else 'NOT met'}). Best of {REPEAT} rounds of "
            f"{NUMBER:,} calls each, rounds interleaved. loopsafe keeps its per-loop state on "
            "the loop object, so a warm lookup is one attribute read and one dict lookup."
        ),
    )


if __name__ == "__main__":
    main()
