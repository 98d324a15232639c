"""Migrations: versioned, idempotent, and the constraints that make content exactly-once."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest
from roadmap_testkit import query

from roadmap_app.__main__ import migrate_database
from roadmap_app.migrations import SCHEMA_VERSION

pytestmark = [pytest.mark.postgres]


def test_migrating_again_applies_nothing_and_the_version_is_recorded(database_url: str) -> None:
    assert migrate_database(database_url) == []
    assert query(
        database_url, "SELECT version, description FROM schema_version ORDER BY version"
    ) == [
        (1, "initial schema"),
        (2, "job leases and failed concepts"),
        (SCHEMA_VERSION, "curriculum versions with the reviewer's feedback"),
    ]
    tables = {
        name
        for (name,) in query(
            database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert {
        "roadmaps",
        "stages",
        "modules",
        "concepts",
        "concept_content",
        "execution_logs",
        "curriculum_versions",
    } <= tables


def test_a_database_at_version_2_gets_the_curriculum_versions_table(database_url: str) -> None:
    # As a database migrated before issue 22's curriculum versions left it.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_version WHERE version = 3")
        conn.execute("DROP TABLE curriculum_versions")
    assert migrate_database(database_url) == [3]
    assert query(
        database_url,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'curriculum_versions' ORDER BY ordinal_position",
    ) == [
        (name,)
        for name in (
            "roadmap_id",
            "version",
            "title",
            "summary",
            "feedback",
            "concepts",
            "stages",
            "created_at",
        )
    ]
    assert migrate_database(database_url) == []


def test_the_migrate_command_reports_what_it_did(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roadmap_app", "migrate"],
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"schema version {SCHEMA_VERSION} on postgresql://" in result.stdout
    assert result.stdout.rstrip().endswith("nothing to do")


def test_a_concepts_content_cannot_be_saved_twice(database_url: str) -> None:
    roadmap_id = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO roadmaps (id, goal, level, weekly_hours, review_requested, status,"
            " curriculum_version, curriculum_ready) VALUES (%s, 'g', 'beginner', 1, false, 'pending', 0, false)",
            (roadmap_id,),
        )
        (stage_id,) = (
            conn.execute(
                "INSERT INTO stages (roadmap_id, position, title, description) VALUES (%s, 1, 's', '') RETURNING id",
                (roadmap_id,),
            ).fetchone()
            or ()
        )
        (module_id,) = (
            conn.execute(
                "INSERT INTO modules (stage_id, position, title, description) VALUES (%s, 1, 'm', '') RETURNING id",
                (stage_id,),
            ).fetchone()
            or ()
        )
        (concept_id,) = (
            conn.execute(
                "INSERT INTO concepts (roadmap_id, module_id, stage_position, position, slug, title, summary,"
                " estimated_hours) VALUES (%s, %s, 1, 1, 'c', 'c', '', 1) RETURNING id",
                (roadmap_id, module_id),
            ).fetchone()
            or ()
        )
        insert = (
            "INSERT INTO concept_content (concept_id, roadmap_id, tutorial, resources, quiz)"
            " VALUES (%s, %s, 't', '[]', '[]')"
        )
        conn.execute(insert, (concept_id, roadmap_id))
        with pytest.raises(psycopg.errors.UniqueViolation, match="concept_content_pkey"):
            conn.execute(insert, (concept_id, roadmap_id))
        with pytest.raises(psycopg.errors.UniqueViolation, match="uq_concept_slug"):
            conn.execute(
                "INSERT INTO concepts (roadmap_id, module_id, stage_position, position, slug, title,"
                " summary, estimated_hours) VALUES (%s, %s, 1, 2, 'c', 'c again', '', 1)",
                (roadmap_id, module_id),
            )
