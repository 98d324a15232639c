"""The opt-in pytest plugin, as a user's suite meets it: per-test loops never share a resource."""

from __future__ import annotations

import pytest

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
