"""Command line: ``python -m loopsafe budget …`` prints how a connection limit splits across roles."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `import loopsafe` must stay free of SQLAlchemy; only `budget` needs it.
    from loopsafe.db import BudgetPlan

__all__ = ("main",)

_BUDGET_EPILOG = """\
roles:
  Each ROLE is NAME=PROCESSES or NAME=PROCESSES:LOOPS, e.g. web=2 (two processes, one loop
  each) or workflow=4:8 (four Celery processes with a threads pool of 8, i.e. 8 loops each).
  PROCESSES counts every process of that role across all hosts. --weight web=3 gives each web
  process three times the share of a weight-1 process; --minimum web=8 guarantees each web
  process 8 connections whatever the weights.

how it splits:
  usable = floor(max_connections × (1 − reserve)) is shared by all processes of all roles, in
  proportion to their weights (default 1: equal shares), never below a role's minimum (default
  one connection per loop). Each process's share is split evenly between its loops:
  pool_size (kept open) + max_overflow (opened under load) per loop. Every process caps itself at
  its share, so the total never exceeds usable. In each process, use
      Database(budget=BudgetPlan.from_env().budget_for())
  with LOOPSAFE_BUDGET_PLAN (the plan's JSON, printed by --json, or a file holding it) and
  LOOPSAFE_ROLE=<the process's role>.

exit status: 0 when the plan fits, 1 when it cannot (with what would fit), 2 for bad arguments.

examples:
  python -m loopsafe budget --max-connections 50 --reserve 0.1 web=2 content=3 workflow=4 logs=4
  python -m loopsafe budget --max-connections 50 web=2 content=6 workflow=4 logs=4 --weight web=4
  python -m loopsafe budget --plan plan.json      (or no arguments with LOOPSAFE_BUDGET_PLAN set)
"""


@dataclass(frozen=True)
class _Role:
    name: str
    processes: int
    loops: int


def _role(text: str) -> _Role:
    name, sep, spec = text.partition("=")
    processes_text, _, loops_text = spec.partition(":")
    try:
        if not sep or not name.strip():
            raise ValueError
        processes = int(processes_text)
        loops = int(loops_text) if loops_text else 1
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=PROCESSES or NAME=PROCESSES:LOOPS (e.g. web=2, workflow=4:8)"
        ) from None
    if processes < 1 or loops < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: processes and loops must be at least 1")
    return _Role(name.strip(), processes, loops)


def _named_number(text: str) -> tuple[str, float]:
    name, sep, value_text = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        value = float(value_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=NUMBER (e.g. web=3)") from None
    return name.strip(), value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number such as 0.1") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"reserve must be in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loopsafe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    budget = commands.add_parser(
        "budget",
        help="split a server's connection limit into pool settings per role",
        description="Split a PostgreSQL server's (or pooler's) connection limit across every "
        "process and event loop of an application, role by role, and print each role's pool "
        "settings.",
        epilog=_BUDGET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    budget.add_argument(
        "--max-connections",
        type=_positive_int,
        metavar="N",
        help="connections the server or pooler allows this application (e.g. 50)",
    )
    budget.add_argument(
        "--reserve",
        type=_fraction,
        default=0.1,
        metavar="FRACTION",
        help="fraction kept back for admin work and migrations (default 0.1)",
    )
    budget.add_argument(
        "--weight",
        type=_named_number,
        action="append",
        default=[],
        metavar="NAME=W",
        help="relative share of each process of role NAME (default 1)",
    )
    budget.add_argument(
        "--minimum",
        type=_named_number,
        action="append",
        default=[],
        metavar="NAME=N",
        help="connections guaranteed to each process of role NAME",
    )
    budget.add_argument(
        "--plan",
        metavar="FILE|JSON",
        help="read the plan (BudgetPlan JSON) instead of ROLE arguments; default "
        "$LOOPSAFE_BUDGET_PLAN when no ROLE is given",
    )
    budget.add_argument("--json", action="store_true", help="print the plan as JSON")
    budget.add_argument(
        "roles", nargs="*", type=_role, metavar="ROLE", help="NAME=PROCESSES[:LOOPS]"
    )
    return parser


def _plan_from_arguments(arguments: argparse.Namespace) -> BudgetPlan:
    """The plan the arguments describe; raises ValueError with what is wrong."""
    from loopsafe.db import BudgetPlan, Role

    if arguments.plan is not None or not arguments.roles:
        if arguments.roles or arguments.weight or arguments.minimum:
            raise ValueError("give either --plan or ROLE arguments (with --weight/--minimum)")
        if arguments.plan is None:
            if not os.environ.get("LOOPSAFE_BUDGET_PLAN", "").strip():
                raise ValueError(
                    "give --max-connections and at least one ROLE, --plan, or set "
                    "LOOPSAFE_BUDGET_PLAN"
                )
            return BudgetPlan.from_env()
        return BudgetPlan.load(arguments.plan, source="--plan")
    if arguments.max_connections is None:
        raise ValueError("--max-connections is required with ROLE arguments")
    names = [role.name for role in arguments.roles]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"role {duplicates[0]!r} is given more than once")
    weights = dict(arguments.weight)
    minimums = dict(arguments.minimum)
    for name in {*weights, *minimums} - set(names):
        raise ValueError(f"--weight/--minimum name {name!r}, which is not one of the roles")
    for name, minimum in minimums.items():
        if minimum != int(minimum):
            raise ValueError(f"--minimum {name}={minimum:g} must be a whole number")
    roles = {
        role.name: Role(
            processes=role.processes,
            loops=role.loops,
            weight=weights.get(role.name, 1.0),
            minimum=int(minimums.get(role.name, 0)),
        )
        for role in arguments.roles
    }
    return BudgetPlan(arguments.max_connections, roles, arguments.reserve)


def _budget(arguments: argparse.Namespace) -> int:
    try:
        plan = _plan_from_arguments(arguments)
    except ValueError as error:
        status = 1 if "What would fit" in str(error) else 2
        print(f"error: {error}", file=sys.stderr)
        return status
    if arguments.json:
        print(json.dumps(plan.to_mapping(), indent=2))
        return 0
    header = ("role", "processes", "loops", "weight", "pool_size", "max_overflow", "connections")
    rows: list[tuple[str, ...]] = []
    total_processes = 0
    for name, role in plan.roles.items():
        if role.processes is None:
            cap = plan.elastic_limit - role.headroom
            rows.append((name, "elastic", "-", f"{role.weight:g}", "-", "-", f"≤{cap}"))
            continue
        budget = plan.budget_for(name)
        total_processes += role.processes
        rows.append(
            (
                name,
                str(role.processes),
                str(role.loops),
                f"{role.weight:g}",
                str(budget.pool_size),
                str(budget.max_overflow),
                str(budget.total),
            )
        )
    processes = f"{total_processes}+" if plan.elastic else str(total_processes)
    rows.append(("total", processes, "", "", "", "", str(plan.total)))
    _print_table(header, rows)
    if plan.elastic:
        print(
            f"\nelastic roles: any number of processes share {plan.elastic_limit} connections "
            f"through the ledger {plan.name!r} in Redis, one lease per connection in use; higher "
            "priority is served first, and a role takes a connection only while its headroom "
            "stays free for the roles above it:\n"
        )
        elastic_rows = [
            (
                name,
                str(role.priority),
                str(role.headroom),
                f"≥{role.headroom + 1} free",
                str(plan.elastic_limit - role.headroom),
            )
            for name, role in sorted(
                plan.roles.items(), key=lambda item: (-item[1].priority, item[0])
            )
            if role.elastic
        ]
        _print_table(
            ("role", "priority", "headroom", "takes one while", "at most"),
            elastic_rows,
            total=False,
        )
    print(
        f"\n{plan.total} of {plan.usable} usable connections (max_connections="
        f"{plan.max_connections}, reserve={plan.reserve:g}); every process caps itself at its "
        "share: Database(budget=BudgetPlan.from_env().budget_for()) with LOOPSAFE_BUDGET_PLAN "
        "(--json prints it) and LOOPSAFE_ROLE."
    )
    return 0


def _print_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, total: bool = True
) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    print(line(header))
    print(line(["-" * width for width in widths]))
    body = rows[:-1] if total else rows
    for row in body:
        print(line(row))
    if total:
        print(line(["-" * width for width in widths]))
        print(line(rows[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); returns the exit status."""
    arguments = _parser().parse_args(argv)
    if arguments.command == "budget":
        return _budget(arguments)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
