"""FastAPI recipe: session_dependency per request, install() closing the engines, /health status."""

from __future__ import annotations

import logging
import time
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import loopsafe.db
import loopsafe.fastapi

from ..conftest import logged
from .conftest import server_connections, wait_for_connections

SessionDep = Annotated[AsyncSession, Depends(loopsafe.db.session_dependency)]


def _installed(app: FastAPI) -> FastAPI:
    loopsafe.fastapi.install(app)
    return app


def make_app(table: str) -> FastAPI:
    app = _installed(FastAPI())

    @app.post("/items/{value}")
    async def add(value: int, session: SessionDep) -> dict[str, int]:
        await session.execute(text(f"INSERT INTO {table} VALUES (:v)"), {"v": value})
        if value < 0:
            raise HTTPException(status_code=422, detail="negative")
        return {"added": value}

    @app.get("/items")
    async def count(session: SessionDep) -> dict[str, int]:
        rows = (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
        return {"count": rows}

    @app.get("/health")
    async def health() -> loopsafe.db.PoolStatus:
        return loopsafe.db.pool_status()

    return app


async def test_requests_commit_or_roll_back_and_lifespan_disposes(
    postgres_url: str, db_name: str, app_name: str, table: str
) -> None:
    loopsafe.db.configure(postgres_url, name=db_name)
    app = make_app(table)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        assert (await client.post("/items/1")).json() == {"added": 1}
        assert (await client.post("/items/-1")).status_code == 422  # rolled back
        assert (await client.get("/items")).json() == {"count": 1}
        health = (await client.get("/health")).json()
        assert health["loops"] == 1
        assert health["checked_out"] == 0
        assert health["checked_in"] == 1
        assert await server_connections(postgres_url, app_name) == 1
    # Shutdown disposed the engine on the app's loop: nothing left on the server.
    assert await wait_for_connections(postgres_url, app_name, 0) == 0
    assert loopsafe.db.pool_status()["loops"] == 0


def test_app_served_from_its_own_loop_thread(
    postgres_url: str, db_name: str, app_name: str
) -> None:
    """TestClient runs the app on a loop in another thread: the engine is that loop's own."""
    loopsafe.db.configure(postgres_url, name=db_name)
    app = _installed(FastAPI())

    @app.get("/whoami")
    async def whoami(session: SessionDep) -> dict[str, str]:
        name = (await session.execute(text("SELECT current_setting('application_name')"))).scalar()
        return {"application_name": str(name)}

    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/whoami").json() == {"application_name": app_name}
        assert client.get("/whoami").status_code == 200
    assert loopsafe.db.pool_status()["loops"] == 0


def test_session_dependency_without_configuration_says_what_to_do() -> None:
    app = FastAPI()

    @app.get("/")
    async def index(session: SessionDep) -> dict[str, str]:
        return {}

    with (
        TestClient(app) as client,
        pytest.raises(loopsafe.db.DatabaseNotConfiguredError, match=r"configure\(url\)"),
    ):
        client.get("/")


async def test_an_overloaded_request_gets_its_503_after_one_pool_timeout(
    postgres_url: str, db_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #20 over HTTP: the 503 came after connect_retries × pool_timeout plus backoff."""
    budget = loopsafe.db.PoolBudget(max_connections=1, processes=1, reserve=0)
    db = loopsafe.db.configure(
        postgres_url, name=db_name, budget=budget, engine_options={"pool_timeout": 0.3}
    )
    app = _installed(FastAPI())

    @app.get("/one")
    async def one(session: SessionDep) -> dict[str, int]:
        return {"one": (await session.execute(text("SELECT 1"))).scalar_one()}

    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            db.session() as holder,  # the budget's one connection, held by another session
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            await holder.execute(text("SELECT 1"))
            with caplog.at_level(logging.DEBUG, logger="loopsafe"):
                started = time.monotonic()
                busy = await client.get("/one")
                elapsed = time.monotonic() - started
        assert (busy.status_code, busy.headers["retry-after"]) == (503, "1")
        assert logged(caplog, "loopsafe.db.connect_retry") == []
        assert len(logged(caplog, "loopsafe.db.request_shed")) == 1
        assert elapsed < 2.0, elapsed  # generous: one pool_timeout, not ~2.5 s of retries
    finally:
        await db.aclose()


def test_the_deprecated_lifespan_still_disposes_the_engines(
    postgres_url: str, db_name: str
) -> None:
    loopsafe.db.configure(postgres_url, name=db_name)
    with pytest.warns(DeprecationWarning, match=r"use loopsafe\.fastapi\.install\(app\) instead"):
        lifespan = loopsafe.db.lifespan
    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def index(session: SessionDep) -> dict[str, int]:
        return {"one": (await session.execute(text("SELECT 1"))).scalar_one()}

    with TestClient(app) as client:
        assert client.get("/").json() == {"one": 1}
        assert loopsafe.db.pool_status()["loops"] == 1
    assert loopsafe.db.pool_status()["loops"] == 0
