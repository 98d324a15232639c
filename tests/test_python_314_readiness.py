"""Python 3.14 deprecates event-loop policies (gone in 3.16): no code here may use them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
# asyncio's policy API, the implicit-loop getter that 3.14 turns into an error outside a loop,
# and uvloop's policy and install() (which sets one).
DEPRECATED = {
    "asyncio": {
        "get_event_loop_policy",
        "set_event_loop_policy",
        "AbstractEventLoopPolicy",
        "DefaultEventLoopPolicy",
        "get_event_loop",
    },
    "uvloop": {"install", "EventLoopPolicy"},
}


def _deprecated_uses(source: str) -> list[str]:
    uses = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in DEPRECATED.get(node.value.id, ()):
                uses.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in DEPRECATED:
            names = [alias.name for alias in node.names if alias.name in DEPRECATED[node.module]]
            uses.extend(f"{node.lineno}: from {node.module} import {name}" for name in names)
    return uses


def test_the_scan_finds_policy_uses() -> None:
    source = (
        "import asyncio, uvloop\nfrom asyncio import DefaultEventLoopPolicy\n"
        "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\nasyncio.new_event_loop()\n"
    )
    assert _deprecated_uses(source) == [
        "2: from asyncio import DefaultEventLoopPolicy",
        "3: asyncio.set_event_loop_policy",
        "3: uvloop.EventLoopPolicy",
    ]


def test_no_event_loop_policy_api_in_the_library_tests_example_or_benchmarks() -> None:
    uses = [
        f"{path.relative_to(ROOT)}:{use}"
        for folder in ("src", "tests", "examples", "benchmarks", "docs")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for use in _deprecated_uses(path.read_text())
    ]
    assert uses == []
