"""The module-level default database: configure(), get_database() and the shortcuts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import loopsafe.db
from loopsafe.db import Database, DatabaseNotConfiguredError, PoolBudget


def test_get_database_without_configuration_says_what_to_do() -> None:
    # Caught as the built-in a user would catch; then checked to be loopsafe's own.
    with pytest.raises(RuntimeError, match=r"configure\(url\).*DATABASE_URL") as caught:
        loopsafe.db.get_database()
    assert isinstance(caught.value, DatabaseNotConfiguredError)


def test_get_database_configures_itself_from_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@fromenv:5432/d")
    database = loopsafe.db.get_database()
    assert database.url.host == "fromenv"
    assert database.url.drivername == "postgresql+asyncpg"
    assert loopsafe.db.get_database() is database


def test_configure_passes_options_and_replaces_the_default() -> None:
    first = loopsafe.db.configure("postgresql://u@h/one", name="one")
    assert loopsafe.db.get_database() is first
    budget = PoolBudget(20, 2)
    second = loopsafe.db.configure("postgresql://u@h/two", budget=budget, poolclass="null")
    assert isinstance(second, Database)
    assert loopsafe.db.get_database() is second
    assert (second.budget, second.poolclass) == (budget, "null")
    with pytest.raises(TypeError, match="unexpected keyword argument 'pool_size'"):
        loopsafe.db.configure("postgresql://u@h/d", pool_size=3)


async def test_shortcuts_use_the_default_database(postgres_url: str, db_name: str) -> None:
    database = loopsafe.db.configure(postgres_url, name=db_name)
    assert loopsafe.db.get_engine() is database.get_engine()
    assert loopsafe.db.session_maker() is database.session_maker()
    async with loopsafe.db.session() as session:
        assert (await session.execute(text("SELECT 40 + 2"))).scalar() == 42

    async def work(session: AsyncSession) -> int:
        value: int = (await session.execute(text("SELECT 7"))).scalar_one()
        return value

    assert await loopsafe.db.run_in_transaction(work) == 7
    status = loopsafe.db.pool_status()
    assert status == database.pool_status()
    assert status["loops"] == 1


def test_importing_loopsafe_does_not_import_sqlalchemy() -> None:
    code = "import sys, loopsafe; print('sqlalchemy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
