"""Cost of handing coroutines to the shared process loop, as Celery's threads pool does.

With ``install(app, loop="process")`` every pool thread's `run_async` hands its coroutine to one
loop thread and waits for the outcome. Measured, the same way in one run, for that shared loop
and for each thread's own loop (``loop="thread"``):

- one thread, sequential no-op calls: the hand-off's latency (two thread switches);
- 100 threads making no-op calls at once: what a burst of task starts costs per call;
- 100 threads × 5 × ``asyncio.sleep(0.1)``: the wall time above the ideal 0.5 s, the io
  workload of `bench_celery_async.py` in miniature, without Celery.

Wall time and process CPU time (every thread) per call; best of 5 interleaved rounds. Writes
results/process_loop.md and .png.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_results

from loopsafe import close_all_loops, run_async, use_process_loop

REPEAT = 5
SEQUENTIAL = 10_000
THREADS = 100
BURST_CALLS = 100  # per thread
SLEEPS = 5  # per thread
SLEEP = 0.1

Body = Callable[[], Coroutine[Any, Any, None]]


async def noop() -> None:
    return None


async def nap() -> None:
    await asyncio.sleep(SLEEP)


def timed(work: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `work`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def sequential() -> tuple[float, float]:
    def work() -> None:
        for _ in range(SEQUENTIAL):
            run_async(noop())

    return timed(work)


def in_threads(calls: int, body: Body) -> tuple[float, float]:
    """`THREADS` threads making `calls` calls each, started together."""
    barrier = threading.Barrier(THREADS + 1)

    def call() -> None:
        run_async(noop())  # a per-thread loop is made here, before the clock starts
        barrier.wait()
        for _ in range(calls):
            run_async(body())

    threads = [threading.Thread(target=call) for _ in range(THREADS)]
    for thread in threads:
        thread.start()

    def work() -> None:
        barrier.wait()
        for thread in threads:
            thread.join()

    return timed(work)


def measure() -> dict[str, dict[str, tuple[float, float]]]:
    """Per mode and measurement: the best (wall, CPU) over the rounds, per call or in excess."""
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for _ in range(REPEAT):
        for mode in ("shared process loop", "per-thread loops"):
            close_all_loops()
            use_process_loop(mode == "shared process loop")
            run_async(noop())  # the loop exists before the clock starts
            wall, cpu = sequential()
            burst_wall, burst_cpu = in_threads(BURST_CALLS, noop)
            sleep_wall, sleep_cpu = in_threads(SLEEPS, nap)
            rounds = {
                "one thread, sequential": (wall / SEQUENTIAL, cpu / SEQUENTIAL),
                f"{THREADS} threads at once": (
                    burst_wall / (THREADS * BURST_CALLS),
                    burst_cpu / (THREADS * BURST_CALLS),
                ),
                f"{THREADS} threads × {SLEEPS} × sleep({SLEEP:g})": (
                    sleep_wall - SLEEPS * SLEEP,
                    sleep_cpu / (THREADS * SLEEPS),
                ),
            }
            best = results.setdefault(mode, {})
            for name, (wall_s, cpu_s) in rounds.items():
                before = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(before[0], wall_s), min(before[1], cpu_s))
    use_process_loop(False)
    close_all_loops()
    return results


def main() -> None:
    results = measure()
    rows: list[list[object]] = []
    for mode, measured in results.items():
        for name, (wall, cpu) in measured.items():
            if "sleep" in name:
                rows.append([mode, name, f"+{wall * 1e3:.1f} ms over {SLEEPS * SLEEP:g} s",
                             f"{cpu * 1e6:.0f} µs per call"])  # fmt: skip
            else:
                rows.append([mode, name, f"{wall * 1e6:.1f} µs per call",
                             f"{cpu * 1e6:.1f} µs per call"])  # fmt: skip
    burst = f"{THREADS} threads at once"
    write_results(
        "process_loop",
        "Handing coroutines to the shared process loop",
        ["loop", "measurement", "wall", "CPU (all threads)"],
        rows,
        chart_labels=[f"{mode}: {burst}" for mode in results]
        + [f"{mode}: one thread" for mode in results],
        chart_values=[results[mode][burst][0] * 1e6 for mode in results]
        + [results[mode]["one thread, sequential"][0] * 1e6 for mode in results],
        chart_xlabel="µs per no-op run_async call (lower is better)",
        notes=(
            f"Best of {REPEAT} interleaved rounds; no-op coroutines unless a sleep is named. "
            "Per-thread loops run the coroutine on the calling thread, so they are the floor; "
            "the shared loop adds two thread switches per call, and a burst of calls from many "
            "threads wakes it once. CPU time counts every thread of the process. Shared 2-core "
            "machine: treat the figures measured in the same run as the finding."
        ),
    )


if __name__ == "__main__":
    main()
