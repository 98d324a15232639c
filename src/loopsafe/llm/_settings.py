"""loopsafe.llm's process-wide configuration: keys, endpoints, timeouts, limits, checked at once."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import httpx

from .._errors import ConfigurationError, ConfigurationTypeError
from .._log import get_logger
from .._validate import count, seconds

__all__ = (
    "PROVIDERS",
    "Limit",
    "Provider",
    "Settings",
    "configure",
    "current_settings",
    "describe",
)

#: The providers loopsafe.llm makes SDK clients for; any other API goes through `get_http()`.
PROVIDERS = ("openai", "anthropic")
_ENV = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
}
DEFAULT_NAMESPACE = "loopsafe:llm"

_log = get_logger("loopsafe.llm")


@dataclass(frozen=True)
class Limit:
    """A limit on calls shared by every process and event loop of one application (through Redis).

    `concurrency`: calls in flight at once; `per_minute`: calls started in any rolling minute (give
    at least one). `max_wait`: seconds a call may queue before `LimitTimeoutError`. `lease`:
    seconds after which a slot held by a process that died is given back (live holders renew it).
    `processes`: how many processes share the limit, used only while Redis is unreachable, when
    each process keeps to its share (``ceil(concurrency / processes)``); defaults to
    ``$LOOPSAFE_PROCESSES``, else 1. Checked by `configure()`.

    .. versionadded:: 0.1.0
    """

    concurrency: int | None = None
    per_minute: int | None = None
    max_wait: float = 60.0
    lease: float = 60.0
    processes: int | None = None

    def share(self, total: int | None) -> int | None:
        """This process's part of `total` while it cannot coordinate with the others."""
        if total is None:
            return None
        return max(1, math.ceil(total / (self.processes or 1)))


@dataclass(frozen=True)
class Provider:
    """How to reach one LLM provider."""

    api_key: str
    base_url: str | None


@dataclass(frozen=True)
class Settings:
    """One `configure()` call, resolved and checked; `version` tells loops to make new clients."""

    providers: Mapping[str, Provider]
    timeout: float
    max_retries: int
    limits: Mapping[str, Limit]
    http: Mapping[str, Mapping[str, Any]]
    namespace: str
    version: int = field(compare=False)


_settings: Settings | None = None
_lock = threading.Lock()
_version = 0


def configure(
    *,
    openai_api_key: str | None = None,
    openai_base_url: str | None = None,
    anthropic_api_key: str | None = None,
    anthropic_base_url: str | None = None,
    providers: Iterable[str] | None = None,
    timeout: float = 60.0,
    max_retries: int = 2,
    limits: Mapping[str, Limit] | None = None,
    http: Mapping[str, Mapping[str, Any]] | None = None,
    namespace: str | None = None,
) -> None:
    """Set how every loop's LLM and HTTP clients are made and limited; applies to clients made next.

    Keys and base URLs default to ``$OPENAI_API_KEY``, ``$OPENAI_BASE_URL``,
    ``$ANTHROPIC_API_KEY`` and ``$ANTHROPIC_BASE_URL``. `providers` (``"openai"``,
    ``"anthropic"``) defaults to those with a key; each one named needs a key. `timeout` (seconds)
    and `max_retries` go to the SDK clients (`max_retries=0` when your code retries itself).
    `limits` maps a name to a `Limit`: ``limits["openai"]`` applies to every request of
    `get_openai()`, ``limits["anthropic"]`` to `get_anthropic()`, ``limits[name]`` to
    `get_http(name)`, and any name to ``async with limit(name):``. `http` maps a client name to
    `httpx.AsyncClient` keyword arguments (``"default"`` exists without it). `namespace`
    (default ``$LOOPSAFE_LLM_NAMESPACE``, else ``"loopsafe:llm"``) prefixes the Redis keys, so
    applications sharing a Redis server do not share limits. Limits are coordinated through the
    Redis server `loopsafe.redis` is configured for (``$REDIS_URL``).

    Nothing connects here, but everything is checked now, with messages naming the setting:
    `ConfigurationError` (a `ValueError`) for a missing key, an unknown provider, a limit or
    timeout that is not a positive finite number (≤ 0, NaN, infinite); `ConfigurationTypeError`
    (also a `TypeError`) for a value of the wrong type and an `http` option httpx does not accept; `ImportError` naming the extra when a named provider's SDK is
    not installed.

    .. versionadded:: 0.1.0
    """
    global _settings, _version
    resolved = _providers(
        {
            "openai": (openai_api_key, openai_base_url),
            "anthropic": (anthropic_api_key, anthropic_base_url),
        },
        providers,
    )
    checked_timeout = seconds("timeout", timeout)
    count("max_retries", max_retries)
    checked_limits = {name: _check_limit(name, limit) for name, limit in (limits or {}).items()}
    checked_http: dict[str, Mapping[str, Any]] = {"default": MappingProxyType({})}
    checked_http.update(
        {name: _check_http(name, options) for name, options in (http or {}).items()}
    )
    space = namespace if namespace is not None else os.environ.get("LOOPSAFE_LLM_NAMESPACE")
    space = space or DEFAULT_NAMESPACE
    if not isinstance(space, str) or not space.strip():
        raise ConfigurationError(f"namespace must be a non-empty string, got {namespace!r}")
    with _lock:
        _version += 1
        _settings = Settings(
            providers=MappingProxyType(resolved),
            timeout=checked_timeout,
            max_retries=max_retries,
            limits=MappingProxyType(checked_limits),
            http=MappingProxyType(checked_http),
            namespace=space,
            version=_version,
        )
    _log.info(
        "loopsafe.llm_configured",
        providers=sorted(resolved),
        limits={name: describe(limit) for name, limit in checked_limits.items()},
        namespace=space,
    )


def _providers(
    given: Mapping[str, tuple[str | None, str | None]], wanted: Iterable[str] | None
) -> dict[str, Provider]:
    found = {
        name: (
            key or os.environ.get(_ENV[name][0]) or None,
            url or os.environ.get(_ENV[name][1]) or None,
        )
        for name, (key, url) in given.items()
    }
    if wanted is None:
        names = [name for name, (key, _) in found.items() if key]
    else:
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        for name in names:
            if name not in PROVIDERS:
                raise ConfigurationError(
                    f"providers: unknown provider {name!r}; loopsafe.llm knows "
                    f"{' and '.join(map(repr, PROVIDERS))} (use get_http() for any other API)"
                )
    resolved: dict[str, Provider] = {}
    for name in names:
        key, url = found[name]
        if not key:
            raise ConfigurationError(
                f"{name}_api_key is missing: pass {name}_api_key= to configure() or set "
                f"{_ENV[name][0]} (any non-empty value for local servers such as vLLM or Ollama)"
            )
        if name == "anthropic" and importlib.util.find_spec("anthropic") is None:
            raise ImportError(
                "providers: 'anthropic' needs the anthropic SDK: pip install 'loopsafe[anthropic]'"
            )
        resolved[name] = Provider(key, url)
    return resolved


def _check_limit(name: object, limit: object) -> Limit:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"limits: a limit's name must be a non-empty string, got {name!r}")
    where = f"limits[{name!r}]"
    if not isinstance(limit, Limit):
        raise ConfigurationError(f"{where} must be a loopsafe.llm.Limit, got {limit!r}")
    if limit.concurrency is None and limit.per_minute is None:
        raise ConfigurationError(f"{where} limits nothing: give concurrency=, per_minute= or both")
    for setting in ("concurrency", "per_minute", "processes"):
        value = getattr(limit, setting)
        if value is not None:
            count(f"{where}.{setting}", value, minimum=1)
    for setting in ("max_wait", "lease"):
        seconds(f"{where}.{setting}", getattr(limit, setting))
    if limit.processes is None and os.environ.get("LOOPSAFE_PROCESSES"):
        raw = os.environ["LOOPSAFE_PROCESSES"]
        if not raw.strip().isdigit() or int(raw) < 1:
            raise ConfigurationError(f"LOOPSAFE_PROCESSES must be a whole number >= 1, got {raw!r}")
        return dataclasses.replace(limit, processes=int(raw))
    return limit


_HTTPX_OPTIONS = frozenset(inspect.signature(httpx.AsyncClient.__init__).parameters) - {"self"}


def _check_http(name: object, options: object) -> Mapping[str, Any]:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"http: a client's name must be a non-empty string, got {name!r}")
    if not isinstance(options, Mapping):
        raise ConfigurationTypeError(
            f"http[{name!r}] must be a mapping of httpx.AsyncClient options, got {options!r}"
        )
    unknown = sorted(set(options) - _HTTPX_OPTIONS)
    if unknown:
        raise ConfigurationTypeError(
            f"http[{name!r}]: httpx.AsyncClient does not accept {', '.join(unknown)}; pass only "
            "its keyword arguments (base_url, headers, timeout, limits, transport, …)"
        )
    return MappingProxyType(dict(options))


def describe(limit: Limit) -> str:
    """The limit in words: ``"8 at once, 500/min"``."""
    parts = [f"{limit.concurrency} at once"] if limit.concurrency else []
    if limit.per_minute:
        parts.append(f"{limit.per_minute}/min")
    return ", ".join(parts)


def current_settings() -> Settings:
    """The latest `configure()`'s settings; configures from the environment on first use."""
    if _settings is None:
        configure()
    assert _settings is not None
    return _settings
