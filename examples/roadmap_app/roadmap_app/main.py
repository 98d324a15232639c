"""The FastAPI app: routers, the web page, and a lifespan that closes loopsafe's resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

import loopsafe.fastapi
from roadmap_app.api.allowed_methods import answer_allowed_methods
from roadmap_app.api.request_guard import RequestGuard
from roadmap_app.api.routes import docs, health, roadmaps, web
from roadmap_app.api.security_headers import SecurityHeaders
from roadmap_app.config import Settings, get_settings
from roadmap_app.events import EventPublisher
from roadmap_app.jobs import create_celery_app
from roadmap_app.resources import configure_resources

__all__ = ("create_app",)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app (`uvicorn --factory roadmap_app.main:create_app`)."""
    settings = settings or get_settings()
    configure_resources(settings)
    celery_app = create_celery_app(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Only the app's own resources: loopsafe.fastapi.install closes loopsafe's (engine,
        # Redis and LLM clients) inside this loop after this, so servers see a clean goodbye.
        try:
            yield
        finally:
            celery_app.close()

    app = FastAPI(
        title="Roadmap generator",
        summary="loopsafe's example app: learning roadmaps on FastAPI + Celery + PostgreSQL + Redis.",
        lifespan=lifespan,
        # Served by `api/routes/docs.py` from local files: FastAPI's pages need a CDN and an
        # inline script, which the Content Security Policy refuses.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.celery = celery_app
    app.state.events = EventPublisher(settings)
    app.state.open_streams = 0  # event streams open now; at most SSE_MAX_SUBSCRIBERS
    app.include_router(roadmaps.router, prefix="/api/v1")
    app.include_router(health.router)
    app.include_router(web.router)
    app.include_router(docs.router)
    # Before /static, which would otherwise answer for /static/vendor/… too.
    app.mount("/static/vendor", StaticFiles(directory=docs.ASSETS_DIR), name="vendor")
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    # Closes every loopsafe resource at shutdown, answers a busy pool with 503 + Retry-After
    # instead of a 500, and serves Prometheus metrics (loopsafe's pool gauges and wait histogram).
    loopsafe.fastapi.install(app, metrics="/metrics")
    answer_allowed_methods(app)
    app.add_middleware(RequestGuard)
    app.add_middleware(SecurityHeaders)
    return app
