"""loopsafe.fastapi.install: wraps the app's lifespan, closes every resource, 503 on overload."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.applications import Starlette

import loopsafe
import loopsafe.fastapi
from loopsafe.db import PoolExhaustedError


class Resource:
    """A loop-local resource that records its closing."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        self.journal.append("resource closed")


def test_install_wraps_the_apps_own_lifespan_and_closes_resources_after_it() -> None:
    """The app's shutdown runs first (and may still use the resource), then loopsafe closes it."""
    journal: list[str] = []
    resource = loopsafe.LoopLocal(lambda: Resource(journal), name="tests.fastapi.resource")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        journal.append("app started")
        yield {"greeting": "hello"}  # Starlette's lifespan state passes through
        journal.append(f"app stopping, resource open: {not resource.get().closed}")

    app = FastAPI(lifespan=lifespan)
    loopsafe.fastapi.install(app)

    @app.get("/")
    async def index(request: Request) -> dict[str, str]:
        resource.get()
        return {"greeting": request.state.greeting}

    with TestClient(app) as client:
        assert client.get("/").json() == {"greeting": "hello"}
        assert journal == ["app started"]
    assert journal == ["app started", "app stopping, resource open: True", "resource closed"]
    assert len(resource) == 0


async def test_resources_close_even_when_the_apps_shutdown_raises() -> None:
    journal: list[str] = []
    resource = loopsafe.LoopLocal(lambda: Resource(journal), name="tests.fastapi.failing")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        raise RuntimeError("the app's own shutdown failed")

    app = FastAPI(lifespan=lifespan)
    loopsafe.fastapi.install(app)
    with pytest.raises(RuntimeError, match="own shutdown failed"):
        async with app.router.lifespan_context(app):
            resource.get()
    assert journal == ["resource closed"]


async def test_install_works_on_a_plain_starlette_app_without_a_lifespan() -> None:
    journal: list[str] = []
    resource = loopsafe.LoopLocal(lambda: Resource(journal), name="tests.fastapi.starlette")
    app = Starlette()
    loopsafe.fastapi.install(app)
    async with app.router.lifespan_context(app):
        resource.get()
    assert journal == ["resource closed"]


def test_installing_twice_with_the_same_options_changes_nothing() -> None:
    app = FastAPI()
    loopsafe.fastapi.install(app, retry_after=2)
    lifespan = app.router.lifespan_context
    handlers = dict(app.exception_handlers)
    loopsafe.fastapi.install(app, retry_after=2.0)
    assert app.router.lifespan_context is lifespan  # not wrapped twice
    assert app.exception_handlers == handlers


def test_installing_twice_with_other_options_says_so() -> None:
    app = FastAPI()
    loopsafe.fastapi.install(app)
    with pytest.raises(
        loopsafe.ConfigurationError,
        match=r"already called for this app with retry_after=1, metrics=None; now with "
        r"retry_after=5",
    ):
        loopsafe.fastapi.install(app, retry_after=5)


@pytest.mark.parametrize("retry_after", [0, -1, math.nan, math.inf, "1", True, None])
def test_a_bad_retry_after_is_refused(retry_after: object) -> None:
    with pytest.raises(
        loopsafe.ConfigurationError, match="retry_after must be a number of seconds"
    ):
        loopsafe.fastapi.install(FastAPI(), retry_after=retry_after)  # type: ignore[arg-type]


@pytest.mark.parametrize("metrics", ["metrics", "", 1, True])
def test_a_bad_metrics_path_is_refused(metrics: object) -> None:
    with pytest.raises(loopsafe.ConfigurationError, match="metrics must be None or a URL path"):
        loopsafe.fastapi.install(FastAPI(), metrics=metrics)  # type: ignore[arg-type]


def test_something_that_is_not_an_app_is_refused() -> None:
    with pytest.raises(TypeError, match="needs a FastAPI or Starlette app, got 'app'"):
        loopsafe.fastapi.install("app")  # type: ignore[arg-type]


async def test_pool_exhausted_answers_503_with_retry_after_rounded_up() -> None:
    app = FastAPI()
    loopsafe.fastapi.install(app, retry_after=0.2)

    @app.get("/")
    async def busy() -> None:
        raise PoolExhaustedError("No connection became free within pool_timeout=1 s: busy")

    @app.get("/broken")
    async def broken() -> None:
        raise TimeoutError("not loopsafe's")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
        assert (response.status_code, response.headers["retry-after"]) == (503, "1")
        assert response.json()["error"] == "pool_exhausted"
        assert (await client.get("/broken")).status_code == 500  # only the pool's error is shed


async def test_metrics_route_serves_the_pool_collector() -> None:
    app = FastAPI()
    loopsafe.fastapi.install(app, metrics="/metrics")
    loopsafe.fastapi.install(FastAPI(), metrics="/metrics")  # a second app: registered once
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# HELP loopsafe_db_pool_capacity" in response.text
    assert "/metrics" not in app.openapi()["paths"]
