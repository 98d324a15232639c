"""Every loopsafe package's surface: ``__all__`` sorted and complete, every name from a public home."""

from __future__ import annotations

import importlib
import inspect
import re
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

import loopsafe
from loopsafe._api_page import PUBLIC_MODULES, render

PACKAGES = (
    "loopsafe",
    "loopsafe.db",
    "loopsafe.redis",
    "loopsafe.celery",
    "loopsafe.llm",
    "loopsafe.http",
    "loopsafe.fastapi",
)
API_PAGE = Path(__file__).parent.parent / "docs" / "api.md"


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


def _public_names() -> list[tuple[str, str]]:
    return [
        (module_name, name)
        for module_name in PUBLIC_MODULES
        for name in importlib.import_module(module_name).__all__
    ]


@pytest.mark.parametrize(("module_name", "name"), _public_names())
def test_every_public_name_has_a_docstring(module_name: str, name: str) -> None:
    value = getattr(importlib.import_module(module_name), name)
    doc = inspect.getdoc(value) if callable(value) else None
    # Not inherited: a subclass without its own docstring would show its base's.
    own = value.__dict__.get("__doc__") if isinstance(value, type) else doc
    assert own, f"{module_name}.{name} has no docstring of its own"
    assert own.strip(), f"{module_name}.{name} has an empty docstring"
    summary = own.strip().split("\n\n")[0]
    assert summary.endswith((".", ":")), f"{module_name}.{name}: summary {summary!r}"


@pytest.mark.parametrize(("module_name", "name"), _public_names())
def test_every_public_name_has_an_entry_on_the_api_page(module_name: str, name: str) -> None:
    page = API_PAGE.read_text(encoding="utf-8")
    section = re.search(
        rf"^\.\. automodule:: {re.escape(module_name)}\n\s+:members: (?P<names>.*)$", page, re.M
    )
    assert section, f"docs/api.md has no section for {module_name}"
    assert name in section["names"].split(", "), (
        f"{module_name}.{name} is missing from docs/api.md: run python -m loopsafe._api_page"
    )


def test_api_page_is_generated_from_all() -> None:
    """The committed page is exactly what the generator renders now (no stale or extra names)."""
    assert API_PAGE.read_text(encoding="utf-8") == render(), (
        "docs/api.md is stale: run python -m loopsafe._api_page docs/api.md"
    )


def test_api_page_covers_every_public_module() -> None:
    """A new public package must be added to the page's module list (and so to this test)."""
    assert set(PACKAGES) <= set(PUBLIC_MODULES)


def _lifespan_closes_databases() -> None:
    import loopsafe.db

    assert callable(loopsafe.db.lifespan)


# Old name → (how to reach it, the replacement its warning must name, a check that it works).
DEPRECATED: dict[str, tuple[Callable[[], Any], str]] = {
    "loopsafe.PoolExhaustedError": (
        lambda: loopsafe.PoolExhaustedError,
        "loopsafe.db.PoolExhaustedError",
    ),
    "loopsafe.db.lifespan": (
        lambda: importlib.import_module("loopsafe.db").lifespan,
        "loopsafe.fastapi.install(app)",
    ),
    "loopsafe.db.install_fastapi": (
        lambda: importlib.import_module("loopsafe.db").install_fastapi,
        "loopsafe.fastapi.install(app)",
    ),
    "loopsafe.db.overload_handler": (
        lambda: importlib.import_module("loopsafe.db").overload_handler,
        "loopsafe.fastapi.install(app)",
    ),
    "loopsafe.llm.get_http": (
        lambda: importlib.import_module("loopsafe.llm").get_http,
        "loopsafe.http.get_http",
    ),
    "loopsafe.celery.close_all_loops": (
        lambda: importlib.import_module("loopsafe.celery").close_all_loops,
        "loopsafe.close_all_loops",
    ),
    "loopsafe.celery.close_thread_loop": (
        lambda: importlib.import_module("loopsafe.celery").close_thread_loop,
        "loopsafe.close_thread_loop",
    ),
}


@pytest.mark.parametrize("old", sorted(DEPRECATED))
def test_old_names_warn_naming_their_replacement(old: str) -> None:
    access, replacement = DEPRECATED[old]
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} is deprecated")) as caught:
        value = access()
    assert value is not None
    message = str(caught[0].message)
    assert f"use {replacement} instead" in message
    assert "removed in loopsafe 0.2.0" in message
    assert caught[0].filename == __file__  # points at the user's line, not at loopsafe


def test_every_deprecated_name_is_tested_here() -> None:
    from loopsafe._deprecated import RENAMED

    for module_name in PUBLIC_MODULES:
        importlib.import_module(module_name)
    assert set(RENAMED) == set(DEPRECATED)


def test_from_import_of_an_old_name_warns_too() -> None:
    with pytest.warns(DeprecationWarning, match="loopsafe.db.PoolExhaustedError"):
        from loopsafe import PoolExhaustedError
    from loopsafe.db import PoolExhaustedError as new

    assert PoolExhaustedError is new


def test_unknown_names_still_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"module 'loopsafe\.db' has no attribute 'lifespam'"):
        importlib.import_module("loopsafe.db").lifespam  # noqa: B018


def test_old_fastapi_names_still_work() -> None:
    """db.install_fastapi / db.overload_handler keep their behaviour: a 503 for an exhausted pool."""
    from fastapi.testclient import TestClient

    import loopsafe.db

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        install_fastapi = loopsafe.db.install_fastapi
        overload_handler = loopsafe.db.overload_handler
    for register in (
        lambda app: install_fastapi(app, retry_after=2),
        lambda app: app.add_exception_handler(loopsafe.db.PoolExhaustedError, overload_handler),
    ):
        app = FastAPI()
        register(app)

        @app.get("/")
        async def busy() -> None:
            raise loopsafe.db.PoolExhaustedError("No connection became free: busy")

        with TestClient(app) as client:
            assert client.get("/").status_code == 503


def test_error_tree_bases() -> None:
    """Configuration errors are ValueErrors, "not configured" ones LookupErrors, all LoopsafeErrors."""
    import loopsafe.celery
    import loopsafe.db
    import loopsafe.llm
    import loopsafe.redis

    assert issubclass(loopsafe.ConfigurationError, (loopsafe.LoopsafeError, ValueError))
    assert issubclass(loopsafe.ConfigurationTypeError, loopsafe.ConfigurationError)
    assert issubclass(loopsafe.ConfigurationTypeError, TypeError)
    assert issubclass(loopsafe.NotConfiguredError, loopsafe.LoopsafeError)
    assert issubclass(loopsafe.NotConfiguredError, LookupError)
    assert issubclass(loopsafe.db.DatabaseNotConfiguredError, loopsafe.NotConfiguredError)
    assert issubclass(loopsafe.db.DatabaseNotConfiguredError, RuntimeError)  # as it was
    assert issubclass(loopsafe.celery.WorkerBudgetError, loopsafe.ConfigurationError)
    for error in (
        loopsafe.db.PoolExhaustedError,
        loopsafe.redis.SubscriptionLostError,
        loopsafe.celery.UnsupportedPoolError,
        loopsafe.llm.LimitTimeoutError,
    ):
        assert issubclass(error, loopsafe.LoopsafeError), error


def _bad_subscribe() -> None:
    import asyncio

    import loopsafe.redis

    async def first() -> None:
        async for _ in loopsafe.redis.subscribe():
            pass

    asyncio.run(first())


# One bad input per part that takes settings: each is a ConfigurationError, naming what is wrong.
BAD_SETTINGS: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "LoopLocal(factory=1)": (
        lambda: loopsafe.LoopLocal(1),  # type: ignore[arg-type]
        loopsafe.ConfigurationTypeError,
        "LoopLocal factory must be callable",
    ),
    "LoopLocal(close_timeout=0)": (
        lambda: loopsafe.LoopLocal(object, close_timeout=0),
        loopsafe.ConfigurationError,
        "close_timeout must be a finite number of seconds > 0",
    ),
    "db.Database(pooler=...)": (
        lambda: importlib.import_module("loopsafe.db").Database(
            "postgresql://u@h/d", pooler="statement"
        ),
        loopsafe.ConfigurationError,
        "pooler must be 'transaction', 'session' or None",
    ),
    "db.Database(url=not a URL)": (
        lambda: importlib.import_module("loopsafe.db").Database("not a url"),
        loopsafe.ConfigurationError,
        "Not a database URL",
    ),
    "redis.configure(url=http://)": (
        lambda: importlib.import_module("loopsafe.redis").configure("http://localhost"),
        loopsafe.ConfigurationError,
        "Unsupported Redis URL",
    ),
    "redis.configure(unknown option)": (
        lambda: importlib.import_module("loopsafe.redis").configure(no_such_option=1),
        loopsafe.ConfigurationTypeError,
        "got an option Redis does not accept",
    ),
    "redis.subscribe()": (_bad_subscribe, loopsafe.ConfigurationError, "at least one channel"),
    "llm.configure(timeout=0)": (
        lambda: importlib.import_module("loopsafe.llm").configure(timeout=0),
        loopsafe.ConfigurationError,
        "timeout must be a finite number of seconds > 0",
    ),
    "llm.configure(providers=[unknown])": (
        lambda: importlib.import_module("loopsafe.llm").configure(providers=["mistral"]),
        loopsafe.ConfigurationError,
        "unknown provider 'mistral'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_raise_configuration_errors(case: str) -> None:
    make, error, message = BAD_SETTINGS[case]
    with pytest.raises(error, match=re.escape(message)) as caught:
        make()
    assert isinstance(caught.value, loopsafe.LoopsafeError)
    assert isinstance(caught.value, ValueError)  # what it was before, still caught as such
