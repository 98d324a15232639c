"""`/health`: database pool status and Redis reachability."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from sqlalchemy import text

import loopsafe.db
from roadmap_app.config import Settings
from roadmap_app.main import create_app
from roadmap_app.processes import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _health(settings: Settings) -> httpx.Response:
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.get("/health")
    app.state.celery.close()
    return response


async def test_health_reports_pool_status_budget_and_redis(configured: Settings) -> None:
    response = await _health(configured)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is True
    assert {"checked_out", "capacity", "pool_size"} <= set(body["database"]["pool"])
    assert body["database"]["budget"]["max_connections"] == configured.database_max_connections
    assert body["database"]["budget"]["processes"] == configured.processes


async def test_health_is_degraded_but_200_without_redis(configured: Settings) -> None:
    response = await _health(replace(configured, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["redis"]["ok"] is False
    assert "Error" in body["redis"]["error"]
    assert body["database"]["ok"] is True


async def test_health_is_503_without_the_database(configured: Settings) -> None:
    response = await _health(
        replace(configured, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    )
    assert response.status_code == 503
    assert response.json()["database"]["ok"] is False


async def test_a_busy_pool_reads_busy_not_down_and_requests_get_503(configured: Settings) -> None:
    """With every connection of this process taken, /health says busy (200, no restart) and a
    request needing the database gets 503 + Retry-After instead of a 500."""
    settings = replace(
        configured, database_pool_size=1, database_max_overflow=0, database_pool_timeout_s=0.2
    )
    app = create_app(settings)
    try:
        async with (
            loopsafe.db.session() as held,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
        ):
            await held.execute(text("SELECT 1"))
            health = await http.get("/health")
            listing = await http.get("/api/v1/roadmaps")
    finally:
        app.state.celery.close()
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["database"]["busy"], body["database"]["ok"]) == (
        "busy",
        True,
        False,
    )
    assert body["database"]["budget"] is None  # fixed pools: DATABASE_POOL_SIZE
    assert listing.status_code == 503
    assert listing.headers["retry-after"] == "1"


async def test_metrics_serve_the_pool_gauges(configured: Settings) -> None:
    app = create_app(configured)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        await http.get("/health")
        metrics = await http.get("/metrics")
    app.state.celery.close()
    assert metrics.status_code == 200
    assert "loopsafe_db_pool_capacity{" in metrics.text
    assert "loopsafe_db_checkout_wait_seconds_bucket{" in metrics.text
