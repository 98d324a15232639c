"""loopsafe.fastapi.install closes the server loop's Redis client when the app shuts down."""

from __future__ import annotations

import uuid

import pytest
import redis
from fastapi import FastAPI

import loopsafe.fastapi
import loopsafe.redis

from .conftest import async_wait_until


def _named(observer: redis.Redis, name: str) -> int:
    return sum(1 for client in observer.client_list() if client.get("name") == name)


@pytest.mark.parametrize("installed", [True, False])
async def test_install_closes_the_redis_client_at_shutdown_not_at_loop_end(
    redis_url: str, observer: redis.Redis, installed: bool
) -> None:
    """The server's loop keeps running after the lifespan (as uvicorn's does until it exits).

    With install the client is closed by the end of the shutdown; without it (the control) it is
    still connected then, and only the loop's own end would close it.
    """
    name = f"loopsafe-install-{uuid.uuid4().hex[:8]}"
    loopsafe.redis.configure(redis_url, client_name=name)
    app = FastAPI()
    if installed:
        loopsafe.fastapi.install(app)
    async with app.router.lifespan_context(app):
        assert await loopsafe.redis.get_redis().ping()
        assert _named(observer, name) == 1
    if installed:
        await async_wait_until(lambda: _named(observer, name) == 0, what=f"{name} disconnected")
    else:
        assert _named(observer, name) == 1
        await loopsafe.aclose_all()  # what the loop's end would do; leaves nothing behind
