"""Events go through stdlib logging only, never print by themselves, and never show a password."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from loopsafe._log import get_logger, redact_dsn

from .conftest import logged


def test_an_unconfigured_application_sees_no_output_even_for_warnings() -> None:
    code = """
import asyncio, gc, loopsafe
local = loopsafe.LoopLocal(object, name="quiet")
async def use(): local.get()
loop = asyncio.new_event_loop(); loop.run_until_complete(use()); loop.close()
del loop; gc.collect()
asyncio.run(use())  # a new loop: where abandoned instances are collected (and logged)
assert loopsafe.stats()[0]["abandoned"] == 1, loopsafe.stats()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_a_configured_application_gets_event_names_and_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="loopsafe")
    get_logger("loopsafe.test").info("loopsafe.engine_created", url="postgresql://u@h/db", size=5)
    (record,) = caplog.records
    assert record.name == "loopsafe.test"
    assert record.levelno == logging.INFO
    assert record.getMessage() == "loopsafe.engine_created url='postgresql://u@h/db' size=5"
    assert logged(caplog, "loopsafe.engine_created") == [{"url": "postgresql://u@h/db", "size": 5}]


def test_disabled_levels_cost_no_rendering(caplog: pytest.LogCaptureFixture) -> None:
    class Explodes:
        def __repr__(self) -> str:
            raise AssertionError("rendered although DEBUG is off")

    caplog.set_level(logging.INFO, logger="loopsafe")
    get_logger("loopsafe.test").debug("loopsafe.noise", value=Explodes())
    assert caplog.records == []


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql+asyncpg://app:s3cr3t@db:5432/x", "postgresql+asyncpg://app:***@db:5432/x"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:p%40ss@cache/1?ssl=1", "rediss://user:***@cache/1?ssl=1"),
        ("postgresql://db/x?user=a&password=topsecret&sslmode=require",
         "postgresql://db/x?user=a&password=***&sslmode=require"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
    ],
)  # fmt: skip
def test_redact_dsn_hides_passwords_and_keeps_the_rest(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
