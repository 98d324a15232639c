"""pooler="transaction" behind a real PgBouncer in transaction mode, for asyncpg and psycopg."""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import text

from loopsafe.db import Database

PREPARED_STATEMENT_TROUBLE = re.compile(r"prepared statement .* (already exists|does not exist)")

#: Many clients, few server connections (the fixture gives PgBouncer 3): clients keep landing on
#: server sessions where other clients prepared statements.
CLIENTS = 40
ROUNDS = 4


async def _hammer(db: Database, rounds: int = ROUNDS) -> list[str]:
    """Run CLIENTS concurrent sessions `rounds` times; return the prepared-statement errors."""
    errors: list[str] = []
    statements = [
        text("SELECT 1"),
        text("SELECT CAST(:x AS int) + 1").bindparams(x=41),
        text("SELECT count(*) FROM pg_class WHERE relname = :name").bindparams(name="pg_type"),
    ]

    async def client(index: int) -> None:
        for round_ in range(rounds):
            try:
                async with db.session() as session:
                    for statement in statements[(index + round_) % 3 :]:
                        await session.execute(statement)
            except Exception as error:
                if PREPARED_STATEMENT_TROUBLE.search(str(error)):
                    errors.append(str(error).splitlines()[0])
                else:
                    raise

    await asyncio.gather(*(client(index) for index in range(CLIENTS)))
    return errors


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_transaction_pooler_mode_works_behind_pgbouncer(
    pgbouncer_url: str, db_name: str, driver: str
) -> None:
    url = pgbouncer_url.replace("postgresql://", f"postgresql+{driver}://", 1)
    db = Database(
        url,
        name=db_name,
        pooler="transaction",
        engine_options={"pool_size": CLIENTS // 2, "max_overflow": CLIENTS // 2},
    )
    # Enough rounds that psycopg would prepare (it does so from the 6th execution).
    assert await _hammer(db, rounds=10) == []
    # And more than the pooler's 3 server connections really were in use by clients.
    assert db.pool_status()["checked_in"] > 3


async def test_default_asyncpg_settings_fail_behind_pgbouncer(
    pgbouncer_url: str, db_name: str
) -> None:
    """Control: without pooler="transaction", asyncpg's statement names collide in PgBouncer."""
    db = Database(
        pgbouncer_url,
        name=db_name,
        engine_options={"pool_size": CLIENTS // 2, "max_overflow": CLIENTS // 2},
    )
    assert await _hammer(db) != []


async def test_psycopg_default_settings_fail_behind_pgbouncer(
    pgbouncer_url: str, db_name: str
) -> None:
    """Control for psycopg: it prepares statements after 5 executions, which breaks too."""
    url = pgbouncer_url.replace("postgresql://", "postgresql+psycopg://", 1)
    db = Database(
        url,
        name=db_name,
        engine_options={"pool_size": CLIENTS // 2, "max_overflow": CLIENTS // 2},
    )
    assert await _hammer(db, rounds=10) != []
