"""docs/environment.md lists every environment variable the library reads, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "environment.md"
#: Names of the variables loopsafe reads: its own prefix, and the conventional ones it honours.
VARIABLE = re.compile(
    r"\b(LOOPSAFE_[A-Z0-9_]*[A-Z0-9]|DATABASE_(?:URL|MAX_CONNECTIONS)|REDIS_URL"
    r"|(?:OPENAI|ANTHROPIC)_(?:API_KEY|BASE_URL))\b"
)


def variables_in(text: str) -> set[str]:
    return set(VARIABLE.findall(text))


def library_variables() -> set[str]:
    sources = (ROOT / "src" / "loopsafe").rglob("*.py")
    return set().union(*(variables_in(path.read_text()) for path in sources))


def documented_variables() -> set[str]:
    # A variable is documented by a table row that starts with it (a row may name two).
    rows = [line for line in PAGE.read_text().splitlines() if line.startswith("| `")]
    return set().union(*(variables_in(row.split("|")[1]) for row in rows))


def test_every_variable_the_library_reads_has_a_row() -> None:
    assert library_variables()  # the scan found the sources
    missing = library_variables() - documented_variables()
    assert not missing, f"add these to docs/environment.md: {sorted(missing)}"


def test_every_row_names_a_variable_the_library_reads() -> None:
    stale = documented_variables() - library_variables()
    assert not stale, (
        f"docs/environment.md lists variables loopsafe no longer reads: {sorted(stale)}"
    )


def test_the_scan_tells_variables_from_their_neighbours() -> None:
    text = 'os.environ.get("LOOPSAFE_TEST_DATABASE_URL") or DATABASE_URL; CELERY_WORKER_LOOP'
    assert variables_in(text) == {"LOOPSAFE_TEST_DATABASE_URL", "DATABASE_URL"}
