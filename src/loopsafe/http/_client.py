"""`get_http(name)`: this loop's named httpx client, made from loopsafe.llm's configuration."""

from __future__ import annotations

import httpx

from ..llm._clients import http_client

__all__ = ("get_http",)


def get_http(name: str = "default") -> httpx.AsyncClient:
    """Return the running loop's `httpx.AsyncClient` called `name`, creating it on first use.

    Made from ``loopsafe.llm.configure(http={name: {...}})`` (``"default"``: a plain client with
    the configured timeout); limited by ``limits[name]`` when configured. The same lifecycle as
    `loopsafe.llm.get_openai()`: closed inside its loop when the loop ends, dropped without I/O in
    a forked child. Call it where you use the client; do not keep the result beyond the loop.

    Raises `NoRunningLoopError` outside a running event loop and `NotConfiguredError` (a
    `LookupError`) for a name that is not configured.

    .. versionadded:: 0.1.0
    """
    return http_client(name)
