"""App-level fixtures: a private database, settings, and the app running as real processes."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from roadmap_testkit import Stack, delete_keys, make_env
from sqlalchemy.engine import make_url

from roadmap_app.__main__ import migrate_database
from roadmap_app.config import Settings
from roadmap_app.main import create_app
from roadmap_app.resources import configure_resources

# The real-server fixtures (`postgres_url`, `redis_url`); this conftest is top-level when the app's
# tests run on their own.
pytest_plugins = ["loopsafe.testing"]


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> Iterator[str]:
    """A fresh database for this test session on the `postgres_url` server, migrated; dropped
    at the end."""
    name = f"roadmap_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(postgres_url, name)
    try:
        migrate_database(url)
        yield url
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def app_env(database_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    # A key prefix of its own: other test sessions on the same Redis never take our jobs.
    prefix = f"rmtest{uuid.uuid4().hex[:8]}:"
    yield make_env(database_url, redis_url, prefix)
    delete_keys(redis_url, prefix)


@pytest.fixture(scope="session")
def settings(app_env: dict[str, str]) -> Settings:
    return Settings.from_env(app_env)


@pytest.fixture
def configured(settings: Settings) -> Settings:
    """loopsafe's default database and Redis client pointed at the test servers (in-process)."""
    configure_resources(settings)
    return settings


@pytest.fixture
async def client(configured: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process behind an httpx client: requests reach it through ASGI, no server."""
    app = create_app(configured)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://roadmap.test"
    ) as http:
        yield http
    app.state.celery.close()


@pytest.fixture(scope="session")
def stack(app_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The app for the whole session: API, a `workflow`+`logs` worker and a `content` worker."""
    running = Stack(app_env, tmp_path_factory.mktemp("stack-logs"), name="main")
    try:
        running.start_api()
        running.start_worker("workflow", ["workflow", "logs"], beat=True)
        running.start_worker("content", ["content"])
        running.wait_ready()
        yield running
    finally:
        running.stop()


# Slow enough that a roadmap takes seconds to write, so a cancel lands in the middle of it.
SLOW_LLM = {"LLM_LATENCY_MS": "250", "LLM_JITTER_MS": "50", "CONTENT_BATCH_WINDOW_S": "0.5"}


@pytest.fixture(scope="session")
def slow_stack(
    app_env: dict[str, str], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """API and workers whose LLM answers in about 250 ms (cancel tests), on a key prefix of their
    own so no other stack takes their jobs; no beat (the main stack's sweeper covers them)."""
    prefix = f"rmslow{uuid.uuid4().hex[:8]}:"
    env = {**app_env, **SLOW_LLM, "ROADMAP_KEY_PREFIX": prefix}
    running = Stack(env, tmp_path_factory.mktemp("slow-stack-logs"), name="slow")
    try:
        running.start_api()
        running.start_worker("workflow", ["workflow", "logs"])
        running.start_worker("content", ["content"])
        running.wait_ready()
        yield running
    finally:
        running.stop()
        delete_keys(redis_url, prefix)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Never download a browser: use the system Chromium, headless, without network side traffic.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless system Chromium for the page tests of one module; skips without it or Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    playwright_sync = pytest.importorskip("playwright.sync_api")
    with playwright_sync.sync_playwright() as driver:
        instance = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()
