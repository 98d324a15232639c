"""Render docs/api.md from the packages' ``__all__``: one entry per public name, nothing by hand.

``python -m loopsafe._api_page docs/api.md`` rewrites the page; tests/test_public_api.py fails
when the committed page differs from what this renders (a name added, renamed or removed).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ._deprecated import REMOVED_IN, RENAMED

__all__ = ("PUBLIC_MODULES", "main", "render")

#: Every public module, in the order the page shows them.
PUBLIC_MODULES = (
    "loopsafe",
    "loopsafe.db",
    "loopsafe.db.metrics",
    "loopsafe.redis",
    "loopsafe.http",
    "loopsafe.llm",
    "loopsafe.celery",
    "loopsafe.fastapi",
    "loopsafe.testing",
)

_INTRO = """\
# API reference

Every public name of loopsafe, module by module, from the docstrings. Each module's `__all__` is
the list; this page is generated from it (`python -m loopsafe._api_page docs/api.md`) and a test
fails when a public name is missing here or has no docstring. Everything listed is covered by
semantic versioning; modules and names that start with an underscore are not.
"""


def _section(module_name: str) -> str:
    module = importlib.import_module(module_name)
    names = ", ".join(module.__all__)
    return (
        f"## `{module_name}`\n\n"
        "```{eval-rst}\n"
        f".. automodule:: {module_name}\n"
        f"   :members: {names}\n"
        "```\n"
    )


def _deprecated() -> str:
    rows = "\n".join(f"| `{old}` | `{new}` |" for old, new in sorted(RENAMED.items()))
    return (
        "## Deprecated names\n\n"
        f"They still work, with a `DeprecationWarning` naming the replacement, and are removed in "
        f"{REMOVED_IN}.\n\n"
        "| Deprecated | Use instead |\n|---|---|\n"
        f"{rows}\n"
    )


def render() -> str:
    """The page's Markdown, from the current ``__all__`` of every public module."""
    sections = [_section(name) for name in PUBLIC_MODULES]  # imports them, filling RENAMED
    return "\n".join([_INTRO, *sections, _deprecated()])


def main(argv: list[str] | None = None) -> int:
    """Write the page to the path given (default ``docs/api.md``)."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else "docs/api.md")
    target.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
