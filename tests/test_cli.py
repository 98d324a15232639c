"""`python -m loopsafe budget`, run as a real subprocess: the table, the total, the exit codes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from loopsafe.__main__ import main
from loopsafe.db import PoolBudget


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopsafe", *args], capture_output=True, text=True, timeout=60
    )


def _table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and not line.startswith(("-", "role")) and cells[0].isidentifier():
            rows[cells[0]] = cells[1:]
    return rows


def test_budget_table_for_the_issue_example() -> None:
    result = run_cli(
        "budget", "--max-connections", "50", "--reserve", "0.1",
        "web=2", "content=3", "workflow=4", "logs=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "role", "processes", "loops", "pool_size", "max_overflow", "connections",
    ]  # fmt: skip
    rows = _table(result.stdout)
    assert rows["web"] == ["2", "1", "2", "1", "6"]
    assert rows["content"] == ["3", "1", "2", "1", "9"]
    assert rows["workflow"] == ["4", "1", "2", "1", "12"]
    assert rows["logs"] == ["4", "1", "2", "1", "12"]
    assert rows["total"] == ["13", "39"]
    assert "39 of 45 usable connections" in result.stdout


def test_roles_with_several_loops_share_their_process_slice() -> None:
    result = run_cli(
        "budget", "--max-connections", "100", "--reserve", "0.2", "web=2", "workers=2:4"
    )
    assert result.returncode == 0, result.stderr
    rows = _table(result.stdout)
    # 80 usable / 4 processes = 20 per process; a 4-loop worker gives each loop 5.
    assert rows["web"] == ["2", "1", "10", "10", "40"]
    assert rows["workers"] == ["2", "4", "3", "2", "40"]
    assert rows["total"] == ["4", "80"]
    # The same numbers as PoolBudget gives each process of that role.
    worker = PoolBudget(max_connections=100, processes=4, loops_per_process=4, reserve=0.2)
    assert (worker.pool_size, worker.max_overflow) == (3, 2)


def test_infeasible_budget_exits_non_zero_with_what_would_fit() -> None:
    result = run_cli("budget", "--max-connections", "10", "web=4", "workers=4:8")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "9 usable" in result.stderr
    assert "What would fit" in result.stderr
    assert "--max-connections ≥ 72" in result.stderr
    # The proposed fix does fit.
    assert run_cli("budget", "--max-connections", "72", "web=4", "workers=4:8").returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["budget", "web=2"], "--max-connections"),
        (["budget", "--max-connections", "50"], "ROLE"),
        (["budget", "--max-connections", "50", "web"], "is not NAME=PROCESSES"),
        (["budget", "--max-connections", "50", "web=two"], "is not NAME=PROCESSES"),
        (["budget", "--max-connections", "50", "web=0"], "must be at least 1"),
        (["budget", "--max-connections", "0", "web=1"], "must be at least 1"),
        (["budget", "--max-connections", "50", "--reserve", "1.5", "web=1"], r"\[0, 1\)"),
        (["budget", "--max-connections", "50", "web=1", "web=2"], "more than once"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (the same `main` the subprocess runs) to keep the suite fast.
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code  # type: ignore[assignment]
    assert status == 2
    assert re.search(message, capsys.readouterr().err)


def test_bad_arguments_through_the_real_entry_point() -> None:
    result = run_cli("budget", "--max-connections", "50", "web=two")
    assert result.returncode == 2
    assert "'web=two' is not NAME=PROCESSES or NAME=PROCESSES:LOOPS" in result.stderr


def test_help_documents_the_role_syntax() -> None:
    result = run_cli("budget", "--help")
    assert result.returncode == 0
    assert "NAME=PROCESSES or NAME=PROCESSES:LOOPS" in result.stdout
    assert "exit status" in result.stdout
