"""Give re-exported names their public home, so reprs, tracebacks and docs show it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ("claim_public_names",)


def claim_public_names(package: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` of each of `names` defined in a private submodule of `package` to it.

    So ``loopsafe.db.Database`` prints as that rather than ``loopsafe.db._database.Database``.
    """
    for name in names:
        value = namespace[name]
        if getattr(value, "__module__", "").startswith(f"{package}._"):
            value.__module__ = package
