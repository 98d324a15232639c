"""This loop's SDK and HTTP clients: made on first use, closed with the loop, dropped after fork."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import httpx2
import openai

from .._errors import NotConfiguredError
from .._log import get_logger
from .._owner import LoopOwner
from .._registry import LoopLocal
from ._limit import limiter
from ._release import release_without_io
from ._settings import Provider, Settings, current_settings
from ._transport import LoopTransport, LoopTransport2

if TYPE_CHECKING:
    import anthropic

__all__ = ("get_anthropic", "get_openai", "http_client")

_log = get_logger("loopsafe.llm")


class _LoopClients:
    """The clients one event loop has made, by kind and name, for one settings version.

    Clients made before a new `configure()` stay open (someone may still use them) until the loop
    ends; ``made`` keeps every one of them for closing.
    """

    __slots__ = ("current", "made", "version")

    def __init__(self) -> None:
        self.current: dict[str, Any] = {}
        self.made: list[Any] = []
        self.version = -1

    def get(self, key: str, settings: Settings, make: Callable[..., Any], *args: str) -> Any:
        """The client called `key`, made with ``make(settings, *args)`` on first use."""
        if self.version != settings.version:
            self.current = {}
            self.version = settings.version
        client = self.current.get(key)
        if client is None:
            client = self.current[key] = make(settings, *args)
            self.made.append(client)
            _log.debug("loopsafe.llm_client_created", client=key)
        return client


async def _aclose_clients(holder: _LoopClients) -> None:
    failure: Exception | None = None
    for client in reversed(holder.made):
        try:
            # SDK clients close with close(), httpx clients with aclose().
            await (client.aclose() if isinstance(client, httpx.AsyncClient) else client.close())
        except Exception as exc:  # one bad client must not keep the others open
            release_without_io(client)
            failure = failure or exc
    holder.made.clear()
    holder.current.clear()
    if failure is not None:
        raise failure


def _drop_clients(holder: _LoopClients) -> None:
    for client in holder.made:
        release_without_io(client)
    holder.made.clear()
    holder.current.clear()


_loop_clients: LoopLocal[_LoopClients] = LoopLocal(
    _LoopClients, aclose=_aclose_clients, drop=_drop_clients, name="loopsafe.llm"
)


def _provider(settings: Settings, name: str) -> Provider:
    provider = settings.providers.get(name)
    if provider is None:
        key = "OPENAI_API_KEY" if name == "openai" else "ANTHROPIC_API_KEY"
        raise NotConfiguredError(
            f"loopsafe.llm has no {name} key: pass {name}_api_key= to loopsafe.llm.configure() "
            f"or set {key} before the first call"
        )
    return provider


def _owner(package: str, getter: str) -> LoopOwner:
    return LoopOwner(
        asyncio.get_running_loop(),
        what=f"This client from {package}.{getter}",
        fix=(
            f"Call {getter} where you use the client (it returns the running loop's own client) "
            "instead of keeping one in a variable, attribute or closure that outlives its loop."
        ),
    )


def _sdk_options(
    settings: Settings, name: str, http_client_class: Callable[..., Any]
) -> dict[str, Any]:
    """Keyword arguments of an SDK client for provider `name`, over a limited transport."""
    provider = _provider(settings, name)
    transport = LoopTransport2(
        httpx2.AsyncHTTPTransport(),
        _owner("loopsafe.llm", f"get_{name}()"),
        limiter(name, settings),
    )
    return {
        "api_key": provider.api_key,
        "base_url": provider.base_url,
        "timeout": settings.timeout,
        "max_retries": settings.max_retries,
        "http_client": http_client_class(transport=transport),
    }


def _make_openai(settings: Settings) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(**_sdk_options(settings, "openai", openai.DefaultAsyncHttpxClient))


def _make_anthropic(settings: Settings) -> anthropic.AsyncAnthropic:
    try:
        import anthropic
    except ImportError as exc:
        raise ImportError(
            "loopsafe.llm.get_anthropic() needs the anthropic SDK: "
            "pip install 'loopsafe[anthropic]'"
        ) from exc
    options = _sdk_options(settings, "anthropic", anthropic.DefaultAsyncHttpxClient)
    return anthropic.AsyncAnthropic(**options)


def _make_http(settings: Settings, name: str) -> httpx.AsyncClient:
    options = settings.http.get(name)
    if options is None:
        raise NotConfiguredError(
            f"No HTTP client named {name!r}: pass http={{{name!r}: {{...httpx options}}}} to "
            f"loopsafe.llm.configure() (configured: {', '.join(map(repr, settings.http))})"
        )
    kwargs = {"timeout": settings.timeout, **options}
    kwargs["transport"] = LoopTransport(
        kwargs.get("transport") or httpx.AsyncHTTPTransport(),
        _owner("loopsafe.http", f"get_http({name!r})"),
        limiter(name, settings),
    )
    return httpx.AsyncClient(**kwargs)


def get_openai() -> openai.AsyncOpenAI:
    """Return the running loop's `openai.AsyncOpenAI` client, creating it on first use.

    Made from `configure()` (or the environment); every request it sends holds a slot of
    ``limits["openai"]`` when that limit is configured, and a 429 pauses the whole deployment for
    its Retry-After. Closed inside its loop when the loop ends; in a forked child the inherited
    client is kept without a byte sent and the child gets a new one. Call it where you use the
    client; do not keep the result beyond the current loop.

    Raises `NoRunningLoopError` outside a running event loop and `NotConfiguredError` (a
    `LookupError`) when no OpenAI key is configured.

    .. versionadded:: 0.1.0
    """
    client: openai.AsyncOpenAI = _loop_clients.get().get("openai", current_settings(), _make_openai)
    return client


def get_anthropic() -> anthropic.AsyncAnthropic:
    """Return the running loop's `anthropic.AsyncAnthropic` client, creating it on first use.

    The same lifecycle and limiting as `get_openai()`, with ``limits["anthropic"]``.

    Raises `ImportError` naming the extra when the anthropic SDK is not installed,
    `NoRunningLoopError` outside a running event loop and `NotConfiguredError` (a `LookupError`)
    when no Anthropic key is configured.

    .. versionadded:: 0.1.0
    """
    client: anthropic.AsyncAnthropic = _loop_clients.get().get(
        "anthropic", current_settings(), _make_anthropic
    )
    return client


def http_client(name: str) -> httpx.AsyncClient:
    """The running loop's httpx client called `name` (what `loopsafe.http.get_http` returns)."""
    client: httpx.AsyncClient = _loop_clients.get().get(
        f"http:{name}", current_settings(), _make_http, name
    )
    return client
