"""Timing and reporting shared by the benchmarks: best-of-N timing, markdown tables, PNG charts."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def best_per_call(fn: Callable[[], object], *, number: int, repeat: int = 5) -> float:
    """Seconds per call of `fn`, the best of `repeat` runs of `number` calls (noise only adds)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def write_results(
    name: str,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    chart_labels: Sequence[str] = (),
    chart_values: Sequence[float] = (),
    chart_xlabel: str = "",
    notes: str = "",
) -> Path:
    """Write ``results/<name>.md`` (table) and, when chart values are given, ``results/<name>.png``.

    Prints the table too, so a run shows its figures. Returns the markdown path.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines.append(
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()}; "
        "ratios are against a baseline measured in the same run."
    )
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    if notes:
        lines += ["", notes.strip()]
    if chart_values:
        lines += ["", f"![{title}]({name}.png)"]
        _chart(RESULTS / f"{name}.png", title, chart_labels, chart_values, chart_xlabel)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def _chart(
    path: Path, title: str, labels: Sequence[str], values: Sequence[float], xlabel: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(values) + 1.5))
    ax.barh(list(labels)[::-1], list(values)[::-1], color="#3b6ea5")
    for y, value in enumerate(list(values)[::-1]):
        ax.text(value, y, f" {value:.2f}", va="center")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
