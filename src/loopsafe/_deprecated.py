"""Renamed public names: the old ones keep working for one minor version, warning with the new."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ("REMOVED_IN", "RENAMED", "deprecated_names", "warn_renamed")

#: The release that drops the names deprecated now (one minor version after their replacement).
REMOVED_IN = "0.2.0"

#: Every deprecated name of an imported module ("loopsafe.db.lifespan") → its replacement.
RENAMED: dict[str, str] = {}


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that `old` is deprecated in favour of `new` (both as users write them)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in loopsafe {REMOVED_IN}: use {new} instead.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def deprecated_names(
    module: str, renamed: Mapping[str, tuple[str, Callable[[], object]]]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each old name in `renamed` with a `DeprecationWarning`.

    `renamed` maps an old name to (its replacement as users write it, a function returning the
    object to serve). A module ``__getattr__`` runs only for names the module does not have, so
    the warning fires on ``module.old`` and ``from module import old`` alike, once per use, and
    old names stay out of ``__all__``, ``dir()`` and the API page.
    """
    RENAMED.update({f"{module}.{old}": new for old, (new, _) in renamed.items()})

    def __getattr__(name: str) -> Any:
        found = renamed.get(name)
        if found is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        replacement, load = found
        warn_renamed(f"{module}.{name}", replacement)
        return load()

    return __getattr__
