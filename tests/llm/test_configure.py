"""configure(): settings from arguments or the environment; every bad setting fails right there."""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import pytest

from loopsafe import NotConfiguredError
from loopsafe.http import get_http
from loopsafe.llm import Limit, configure, get_anthropic, get_openai, limit
from loopsafe.llm._settings import current_settings


def test_keys_and_base_urls_come_from_the_usual_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ak-env")
    configure()
    settings = current_settings()
    assert sorted(settings.providers) == ["anthropic", "openai"]
    assert settings.providers["openai"].api_key == "sk-env"
    assert settings.providers["openai"].base_url == "http://127.0.0.1:9/v1"
    assert settings.providers["anthropic"].base_url is None


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    configure(openai_api_key="sk-arg", providers=["openai"])
    assert current_settings().providers["openai"].api_key == "sk-arg"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"providers": ["openai"]}, ValueError, r"openai_api_key is missing: .* OPENAI_API_KEY"),
        ({"providers": ["anthropic"]}, ValueError, r"anthropic_api_key is missing"),
        ({"providers": ["gemini"]}, ValueError, r"providers: unknown provider 'gemini'"),
        ({"timeout": 0}, ValueError, r"timeout must be a finite number of seconds > 0, got 0"),
        ({"timeout": math.nan}, ValueError, r"timeout must be .*, got nan"),
        ({"timeout": "60"}, TypeError, r"timeout must be a number of seconds, got '60'"),
        ({"max_retries": -1}, ValueError, r"max_retries must be an int >= 0, got -1"),
        ({"limits": {"openai": Limit(concurrency=0)}}, ValueError,
         r"limits\['openai'\]\.concurrency must be an int >= 1, got 0"),
        ({"limits": {"openai": Limit(per_minute=-5)}}, ValueError,
         r"limits\['openai'\]\.per_minute must be an int >= 1, got -5"),
        ({"limits": {"openai": Limit(concurrency=2.5)}}, TypeError,  # type: ignore[arg-type]
         r"limits\['openai'\]\.concurrency must be an int, got 2\.5"),
        ({"limits": {"openai": Limit(concurrency=1, max_wait=math.nan)}}, ValueError,
         r"limits\['openai'\]\.max_wait must be a finite number of seconds > 0, got nan"),
        ({"limits": {"openai": Limit(concurrency=1, lease=0)}}, ValueError,
         r"limits\['openai'\]\.lease must be a finite number of seconds > 0, got 0"),
        ({"limits": {"openai": Limit()}}, ValueError, r"limits\['openai'\] limits nothing"),
        ({"limits": {"openai": 4}}, ValueError, r"limits\['openai'\] must be a loopsafe\.llm\.Limit"),
        ({"http": {"search": {"base_uri": "http://x"}}}, TypeError,
         r"http\['search'\]: httpx\.AsyncClient does not accept base_uri"),
        ({"namespace": " "}, ValueError, r"namespace must be a non-empty string"),
    ],
)  # fmt: skip
def test_bad_settings_fail_at_configure_naming_the_setting(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    configure(openai_api_key="sk-good")
    before = current_settings()
    with pytest.raises(error, match=message):
        configure(**options)
    assert current_settings() is before  # the good configuration is still in force


def test_the_fallback_share_divides_a_limit_over_loopsafe_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOPSAFE_PROCESSES", "4")
    configure(limits={"openai": Limit(concurrency=10, per_minute=3)})
    limit = current_settings().limits["openai"]
    assert (limit.share(limit.concurrency), limit.share(limit.per_minute)) == (3, 1)
    monkeypatch.setenv("LOOPSAFE_PROCESSES", "four")
    with pytest.raises(
        ValueError, match=r"LOOPSAFE_PROCESSES must be a whole number >= 1, got 'four'"
    ):
        configure(limits={"openai": Limit(concurrency=10)})


def test_anthropic_without_its_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)  # what an uninstalled package looks like
    configure(openai_api_key="sk")

    async def use() -> None:
        get_anthropic()

    with pytest.raises(ImportError, match=r"pip install 'loopsafe\[anthropic\]'"):
        asyncio.run(use())


async def test_getters_say_what_is_missing() -> None:
    configure()
    # NotConfiguredError is a LoopsafeError and, as before, a LookupError.
    with pytest.raises(LookupError, match=r"no openai key: pass openai_api_key= .* OPENAI_API_KEY"):
        get_openai()
    with pytest.raises(NotConfiguredError, match=r"No HTTP client named 'search': pass http="):
        get_http("search")
    with pytest.raises(NotConfiguredError, match=r"No LLM limit named 'openai': pass limits="):
        async with limit("openai"):
            pass
