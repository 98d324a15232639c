"""Every loopsafe package's surface: ``__all__`` sorted and complete, every name from a public home."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ("loopsafe", "loopsafe.db", "loopsafe.redis", "loopsafe.celery", "loopsafe.llm")


@pytest.mark.parametrize("package_name", PACKAGES)
def test_all_lists_exactly_the_public_names_sorted(package_name: str) -> None:
    package = importlib.import_module(package_name)
    # isidentifier(): pytest's assertion rewriting adds "@py_builtins" to plugin packages;
    # submodules (loopsafe.db.metrics once imported) are attributes, not exported names.
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and name.isidentifier()
        and not isinstance(value, types.ModuleType)
    }
    assert list(package.__all__) == sorted(package.__all__)
    assert set(package.__all__) == public


@pytest.mark.parametrize("package_name", PACKAGES)
def test_exported_names_show_a_public_module(package_name: str) -> None:
    # So reprs, tracebacks and the docs say loopsafe.db.Database, not loopsafe.db._database.Database.
    package = importlib.import_module(package_name)
    for name in package.__all__:
        module = getattr(getattr(package, name), "__module__", None)
        if module is not None and module.startswith("loopsafe"):
            assert not any(part.startswith("_") for part in module.split(".")), (name, module)
    defined_here = [
        name
        for name in package.__all__
        if getattr(getattr(package, name), "__module__", None) == package_name
    ]
    assert defined_here, f"{package_name} exports nothing of its own"
