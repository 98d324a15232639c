"""Sphinx configuration: Markdown pages through MyST, the API reference from the docstrings."""

from __future__ import annotations

from pathlib import Path

import loopsafe

project = "loopsafe"
author = "loopsafe developers"
copyright = "loopsafe developers"
release = version = loopsafe.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"loopsafe {release}"

# Docstrings write `Name` for a reference and for a parameter alike: resolve what names an object,
# render the rest as code.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
myst_heading_anchors = 3
# `make docs` runs with -n -W: a reference to loopsafe's own API that does not resolve fails the
# build. Other libraries' names are not linked (no intersphinx: the build must work offline), and
# a bare parameter name in backticks is not a reference to anything; type variables and bases
# from private modules are not API.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!loopsafe\.).*"), (r"py:.*", r"loopsafe(\.\w+)*\._.*")]
# Pages that include part of another page keep its heading levels (a "##" recipe included below
# an intro paragraph).
suppress_warnings = ["myst.header"]


def _write_benchmarks_page() -> None:
    # One section per benchmarks/results/*.md, so a new benchmark appears without editing docs/.
    here = Path(__file__).parent
    sections = [
        f"```{{include}} ../benchmarks/results/{result.name}\n:heading-offset: 1\n"
        f":relative-images:\n```\n"
        for result in sorted((here.parent / "benchmarks" / "results").glob("*.md"))
    ]
    page = (
        "# Benchmarks\n\n`make bench` reruns them on your machine; each ratio is against a "
        "baseline measured in the same run.\n\n" + "\n".join(sections)
    )
    target = here / "benchmarks.md"
    if not target.exists() or target.read_text() != page:
        target.write_text(page)


_write_benchmarks_page()
