"""The app in process, behind an httpx client (requests reach it through ASGI, no server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from roadmap_app.config import Settings
from roadmap_app.main import create_app


@pytest.fixture
async def client(configured: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(configured)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://roadmap.test"
    ) as http:
        yield http
    app.state.celery.close()
