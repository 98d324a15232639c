"""`python -m loopsafe budget`, run as a real subprocess: the table, the total, the exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
        "role", "processes", "loops", "weight", "pool_size", "max_overflow", "connections",
    ]  # fmt: skip
    rows = _table(result.stdout)
    assert rows["web"] == ["2", "1", "1", "2", "1", "6"]
    assert rows["content"] == ["3", "1", "1", "2", "1", "9"]
    assert rows["workflow"] == ["4", "1", "1", "2", "1", "12"]
    assert rows["logs"] == ["4", "1", "1", "2", "1", "12"]
    assert rows["total"] == ["13", "39"]
    assert "39 of 45 usable connections" in result.stdout


def test_roles_with_several_loops_share_their_process_slice() -> None:
    result = run_cli(
        "budget", "--max-connections", "100", "--reserve", "0.2", "web=2", "workers=2:4"
    )
    assert result.returncode == 0, result.stderr
    rows = _table(result.stdout)
    # 80 usable / 4 processes = 20 per process; a 4-loop worker gives each loop 5.
    assert rows["web"] == ["2", "1", "1", "10", "10", "40"]
    assert rows["workers"] == ["2", "4", "1", "3", "2", "40"]
    assert rows["total"] == ["4", "80"]
    # The same numbers as PoolBudget gives each process of that role.
    worker = PoolBudget(max_connections=100, processes=4, loops_per_process=4, reserve=0.2)
    assert (worker.pool_size, worker.max_overflow) == (3, 2)


def test_infeasible_budget_exits_non_zero_with_what_would_fit() -> None:
    result = run_cli("budget", "--max-connections", "10", "web=4", "workers=4:8")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "only 9 of 10 are usable" in result.stderr
    assert "What would fit" in result.stderr
    # 4 + 4 × 8 loops need 36 connections, 40 with the 10 % reserve.
    assert "max_connections ≥ 40" in result.stderr
    # The proposed fix does fit.
    assert run_cli("budget", "--max-connections", "40", "web=4", "workers=4:8").returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["budget", "web=2"], "--max-connections is required"),
        (["budget", "--max-connections", "50"], "at least one ROLE"),
        (
            ["budget", "--max-connections", "50", "web=1", "--weight", "api=2"],
            "not one of the roles",
        ),
        (["budget", "--max-connections", "50", "web=1", "--weight", "web"], "is not NAME=NUMBER"),
        (["budget", "--max-connections", "50", "web=1", "--weight", "web=0"], "weight must be"),
        (["budget", "--max-connections", "50", "web=1", "--minimum", "web=1.5"], "whole number"),
        (["budget", "--plan", "{not json", "--reserve", "0.1"], "--plan is not valid JSON"),
        (["budget", "--plan", "/nonexistent/plan.json"], "cannot be read"),
        (["budget", "--plan", "{}", "web=1"], "either --plan or ROLE"),
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


def test_weights_give_the_web_role_priority_and_json_round_trips_through_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["budget", "--max-connections", "50", "web=2", "content=6", "logs=4"]
    assert main([*args, "--weight", "web=4", "--minimum", "logs=3"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    # 45 usable over 2 × 4 + 6 + 4 units of weight is 2.5 per unit: logs would get 2 < its
    # minimum 3, so logs is fixed at 3 × 4 = 12 and the other 33 split over 14 units (2.36):
    # a web process gets floor(9.43) = 9, a content process 2.
    assert rows["web"] == ["2", "1", "4", "5", "4", "18"]
    assert rows["content"] == ["6", "1", "1", "1", "1", "12"]
    assert rows["logs"] == ["4", "1", "1", "2", "1", "12"]
    assert "42 of 45 usable" in out
    assert main([*args, "--weight", "web=4", "--minimum", "logs=3", "--json"]) == 0
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(capsys.readouterr().out)
    monkeypatch.setenv("LOOPSAFE_BUDGET_PLAN", str(plan_file))
    assert main(["budget"]) == 0
    assert _table(capsys.readouterr().out)["web"] == rows["web"]
