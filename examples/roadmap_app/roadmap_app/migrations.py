"""Versioned, idempotent schema migrations recorded in a `schema_version` table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from roadmap_app.models import Base, CurriculumVersion

__all__ = ("MIGRATIONS", "SCHEMA_VERSION", "Migration", "current_version", "migrate")

# Any constant works; it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK_KEY = 0x526F61646D6170  # "Roadmap"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


async def _initial_schema(conn: AsyncConnection) -> None:
    await conn.run_sync(Base.metadata.create_all)


async def _job_leases(conn: AsyncConnection) -> None:
    # IF NOT EXISTS: a database created by a newer `initial schema` already has the columns.
    await conn.execute(
        text(
            "ALTER TABLE roadmaps"
            " ADD COLUMN IF NOT EXISTS lease_owner uuid,"
            " ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,"
            " ADD COLUMN IF NOT EXISTS failed_concepts jsonb NOT NULL DEFAULT '[]'"
        )
    )


async def _curriculum_versions(conn: AsyncConnection) -> None:
    # create_all skips what exists: a database created by a newer `initial schema` has it.
    table = Base.metadata.tables[CurriculumVersion.__tablename__]
    await conn.run_sync(Base.metadata.create_all, tables=[table])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial_schema),
    Migration(2, "job leases and failed concepts", _job_leases),
    Migration(3, "curriculum versions with the reviewer's feedback", _curriculum_versions),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


async def _ensure_version_table(conn: AsyncConnection) -> None:
    await conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY,"
            " description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
    )


async def current_version(conn: AsyncConnection) -> int:
    """The highest applied migration, 0 for an empty database."""
    exists = await conn.scalar(text("SELECT to_regclass('schema_version') IS NOT NULL"))
    if not exists:
        return 0
    return int(await conn.scalar(text("SELECT coalesce(max(version), 0) FROM schema_version")))


async def migrate(conn: AsyncConnection) -> list[int]:
    """Apply every migration newer than the database, in one transaction; return their versions.

    Safe to run from several processes at once (an advisory lock serialises them) and to run
    again (already-applied versions are skipped).
    """
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    await _ensure_version_table(conn)
    have = await current_version(conn)
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version <= have:
            continue
        await migration.apply(conn)
        await conn.execute(
            text("INSERT INTO schema_version (version, description) VALUES (:v, :d)"),
            {"v": migration.version, "d": migration.description},
        )
        applied.append(migration.version)
    return applied
