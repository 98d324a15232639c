"""Command line: ``python -m loopsafe budget …`` prints how a connection limit splits across roles."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ("main",)

_BUDGET_EPILOG = """\
roles:
  Each ROLE is NAME=PROCESSES or NAME=PROCESSES:LOOPS, e.g. web=2 (two processes, one loop
  each) or workflow=4:8 (four Celery processes with a threads pool of 8, i.e. 8 loops each).
  PROCESSES counts every process of that role across all hosts.

how it splits:
  usable = floor(max_connections × (1 − reserve)) is shared by all processes of all roles.
  Each process gets floor(usable / total processes) connections, split evenly between its
  loops: pool_size (kept open) + max_overflow (opened under load) per loop. In every process
  of a role, use the same numbers through
      Database(budget=PoolBudget(max_connections=M, processes=TOTAL, loops_per_process=LOOPS,
                                 reserve=R))
  (or DATABASE_MAX_CONNECTIONS, LOOPSAFE_PROCESSES=TOTAL, LOOPSAFE_LOOPS_PER_PROCESS and
  PoolBudget.from_env()).

exit status: 0 when the plan fits, 1 when it cannot (with what would fit), 2 for bad arguments.

example:
  python -m loopsafe budget --max-connections 50 --reserve 0.1 web=2 content=3 workflow=4 logs=4
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
        "process and event loop of an application, and print each role's pool settings.",
        epilog=_BUDGET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    budget.add_argument(
        "--max-connections",
        type=_positive_int,
        required=True,
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
        "roles", nargs="+", type=_role, metavar="ROLE", help="NAME=PROCESSES[:LOOPS]"
    )
    return parser


def _budget(max_connections: int, reserve: float, roles: Sequence[_Role]) -> int:
    # Imported here: `import loopsafe` must stay free of SQLAlchemy; only this command needs it.
    from loopsafe.db._budget import PoolBudget, _min_max_connections, _usable

    names = [role.name for role in roles]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        print(f"error: role {duplicates[0]!r} is given more than once", file=sys.stderr)
        return 2
    total_processes = sum(role.processes for role in roles)
    rows: list[tuple[str, ...]] = []
    total = 0
    problems: list[str] = []
    usable = 0
    for role in roles:
        try:
            budget = PoolBudget(max_connections, total_processes, role.loops, reserve)
        except ValueError:
            problems.append(role.name)
            continue
        usable = budget.usable
        connections = role.processes * budget.per_process
        total += connections
        rows.append(
            (
                role.name,
                str(role.processes),
                str(role.loops),
                str(budget.pool_size),
                str(budget.max_overflow),
                str(connections),
            )
        )
    if problems:
        usable = _usable(max_connections, reserve)
        worst = max(role.loops for role in roles if role.name in problems)
        print(
            f"error: {max_connections} connections with a {reserve:.0%} reserve leave {usable} "
            f"usable, which cannot give each of {total_processes} processes × up to {worst} "
            f"loops (roles: {', '.join(problems)}) even one connection. What would fit: at most "
            f"{usable // worst} processes in total at {worst} loops each, fewer loops per "
            f"process, or --max-connections ≥ {_min_max_connections(total_processes * worst, reserve)}.",
            file=sys.stderr,
        )
        return 1
    header = ("role", "processes", "loops", "pool_size", "max_overflow", "connections")
    rows.append(("total", str(total_processes), "", "", "", str(total)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    print(line(header))
    print(line(["-" * width for width in widths]))
    for row in rows[:-1]:
        print(line(row))
    print(line(["-" * width for width in widths]))
    print(line(rows[-1]))
    print(
        f"\n{total} of {usable} usable connections (max_connections={max_connections}, "
        f"reserve={reserve:g}); use PoolBudget(max_connections={max_connections}, "
        f"processes={total_processes}, loops_per_process=<the role's loops>, reserve={reserve:g})."
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); returns the exit status."""
    arguments = _parser().parse_args(argv)
    if arguments.command == "budget":
        return _budget(arguments.max_connections, arguments.reserve, arguments.roles)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
