"""pooler="transaction" behind a real PgBouncer in transaction mode, for asyncpg and psycopg."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any, Literal

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from loopsafe import LoopsafeError
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


# -- AUTOCOMMIT behind a transaction pooler (sqlalchemy/sqlalchemy#12836) -----------------------

AUTOCOMMIT_REFUSED = r"isolation_level='AUTOCOMMIT'.*psycopg.*drop AUTOCOMMIT"


async def test_asyncpg_autocommit_fails_behind_pgbouncer_without_loopsafe(
    pgbouncer_url: str,
) -> None:
    """Control: asyncpg with every transaction-pooler setting loopsafe applies still fails under
    AUTOCOMMIT, because prepare and execute are two round trips with no transaction to pin them
    to one server connection. This is why `Database` refuses the combination."""
    counter = iter(range(10**9))
    engine = create_async_engine(
        pgbouncer_url.replace("postgresql://", "postgresql+asyncpg://", 1),
        isolation_level="AUTOCOMMIT",
        pool_size=CLIENTS // 2,
        max_overflow=CLIENTS // 2,
        connect_args={
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: (
                f"__control_{uuid.uuid4().hex}_{next(counter)}__"
            ),
        },
    )
    errors: list[str] = []

    async def client() -> None:
        for _ in range(ROUNDS):
            try:
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT CAST(:x AS int) + 1").bindparams(x=41))
            except Exception as error:
                if not PREPARED_STATEMENT_TROUBLE.search(str(error)):
                    raise
                errors.append(str(error))

    try:
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    finally:
        await engine.dispose()
    assert errors


@pytest.mark.parametrize(
    "engine_options",
    [
        {"isolation_level": "AUTOCOMMIT"},
        {"isolation_level": "autocommit"},
        {"execution_options": {"isolation_level": "AUTOCOMMIT"}},
    ],
    ids=["isolation_level", "lower-case", "execution_options"],
)
def test_asyncpg_autocommit_behind_a_transaction_pooler_is_refused_up_front(
    engine_options: dict[str, Any], db_name: str
) -> None:
    with pytest.raises(ValueError, match=AUTOCOMMIT_REFUSED) as raised:
        Database(
            "postgresql+asyncpg://u@127.0.0.1:6432/db",
            name=db_name,
            pooler="transaction",
            engine_options=engine_options,
        )
    assert isinstance(raised.value, LoopsafeError)


@pytest.mark.parametrize(
    ("url", "pooler"),
    [
        ("postgresql+asyncpg://u@127.0.0.1:6432/db", None),
        ("postgresql+asyncpg://u@127.0.0.1:6432/db", "session"),
        ("postgresql+psycopg://u@127.0.0.1:6432/db", "transaction"),
    ],
)
def test_autocommit_stays_allowed_where_it_works(
    url: str, pooler: Literal["session"] | None, db_name: str
) -> None:
    """Only asyncpg behind a transaction pooler is refused: a session pooler pins the server
    connection, and psycopg runs a statement in one round trip."""
    db = Database(
        url, name=db_name, pooler=pooler, engine_options={"isolation_level": "AUTOCOMMIT"}
    )
    assert db.pooler == pooler


async def test_asyncpg_autocommit_asked_per_connection_is_refused(
    pgbouncer_url: str, db_name: str
) -> None:
    """AUTOCOMMIT asked for later (per connection, per session connection, per engine copy) is
    refused before a statement runs, and the connection keeps working in a transaction."""
    db = Database(pgbouncer_url, name=db_name, pooler="transaction")
    engine = db.get_engine()
    async with engine.connect() as connection:
        with pytest.raises(ValueError, match=AUTOCOMMIT_REFUSED):
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    with pytest.raises(ValueError, match=AUTOCOMMIT_REFUSED):
        engine.execution_options(isolation_level="AUTOCOMMIT")
    async with db.session_maker()() as session:
        with pytest.raises(ValueError, match=AUTOCOMMIT_REFUSED):
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    async with db.session() as session:
        assert (await session.execute(text("SELECT 2"))).scalar() == 2
    # Other isolation levels are fine: they run inside a transaction.
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="REPEATABLE READ")
        assert (await connection.execute(text("SELECT 3"))).scalar() == 3
    await db.aclose()


async def test_psycopg_autocommit_works_behind_pgbouncer(pgbouncer_url: str, db_name: str) -> None:
    """The fix the refusal names: psycopg under AUTOCOMMIT behind a real PgBouncer, no errors."""
    db = Database(
        pgbouncer_url.replace("postgresql://", "postgresql+psycopg://", 1),
        name=db_name,
        pooler="transaction",
        engine_options={
            "pool_size": CLIENTS // 2,
            "max_overflow": CLIENTS // 2,
            "isolation_level": "AUTOCOMMIT",
        },
    )
    assert await _hammer(db, rounds=10) == []
    async with db.session() as session:
        raw = await (await session.connection()).get_raw_connection()
        assert raw.driver_connection is not None
        assert raw.driver_connection.autocommit
    await db.aclose()


# -- loopsafe.testing.PgBouncer(aliases=...): PgBouncer's own per-database split ---------------


def test_pgbouncer_aliases_each_get_their_own_pool(postgres_url: str) -> None:
    """Each alias is the upstream database behind a pool of its own size (what the contention
    lab's "PgBouncer split" row runs); unknown aliases and bad sizes are clear errors."""
    import psycopg

    from loopsafe.testing import PgBouncer

    try:
        bouncer = PgBouncer(postgres_url, default_pool_size=5, aliases={"api": 2, "worker": 3})
    except FileNotFoundError as error:
        pytest.skip(str(error))
    with bouncer:
        for alias in ("api", "worker"):
            with psycopg.connect(bouncer.url_for(alias)) as connection:
                row = connection.execute("SELECT current_database()").fetchone()
                assert row is not None
                assert row[0] == make_url(postgres_url).database
        sizes = {row["name"]: row["pool_size"] for row in bouncer.admin("SHOW DATABASES")}
        assert (sizes["api"], sizes["worker"]) == ("2", "3")
        with pytest.raises(ValueError, match="has no alias 'web'"):
            bouncer.url_for("web")


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"api db": 2}, "plain name"),
        ({"api": 0}, "pool size must be an int >= 1"),
        ({"api": True}, "pool size must be an int >= 1"),
    ],
)
def test_pgbouncer_refuses_bad_aliases(
    postgres_url: str, aliases: dict[str, Any], message: str
) -> None:
    from loopsafe.testing import PgBouncer

    try:
        with pytest.raises(ValueError, match=message):
            PgBouncer(postgres_url, aliases=aliases)
    except FileNotFoundError as error:
        pytest.skip(str(error))
