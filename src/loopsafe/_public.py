"""Give re-exported names their public home, so reprs, tracebacks and docs show it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ("claim_public_names",)


def claim_public_names(package: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` of each of `names` defined in a private module of `package` to it.

    So ``loopsafe.db.Database`` prints as that rather than ``loopsafe.db._database.Database``.
    Names from the root package's private modules (the errors in ``loopsafe._errors``) count too:
    they belong to the package that exports them.
    """
    private = (f"{package}._", f"{package.partition('.')[0]}._")
    for name in names:
        value = namespace[name]
        if getattr(value, "__module__", "").startswith(private):
            value.__module__ = package
