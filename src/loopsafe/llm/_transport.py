"""HTTP transports that refuse other loops, hold a limit's slot per request, spread Retry-After."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2

from .._owner import LoopOwner
from ._limit import Limiter, Permit

__all__ = ("LoopTransport", "LoopTransport2", "retry_after")

#: The pause after a 429 that names no Retry-After.
DEFAULT_PAUSE = 1.0


def retry_after(headers: Any) -> float:
    """Seconds a 429 asks to wait: ``retry-after-ms`` (OpenAI), else ``retry-after`` (seconds or
    an HTTP date), else `DEFAULT_PAUSE`."""
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(when.timestamp() - time.time(), 0.0)
    return DEFAULT_PAUSE


class _ReleasingStream:
    """A response body that gives its request's slot back when it is closed."""

    def __init__(self, stream: Any, limiter: Limiter, permit: Permit) -> None:
        self._stream = stream
        self._limiter = limiter
        self._permit: Permit | None = permit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        permit, self._permit = self._permit, None
        try:
            await self._stream.aclose()
        finally:
            if permit is not None:
                await self._limiter.release(permit)


class _ReleasingStream1(_ReleasingStream, httpx.AsyncByteStream):
    pass


class _ReleasingStream2(_ReleasingStream, httpx2.AsyncByteStream):
    pass


class _Sending:
    """The body both transports share: the loop check, then one slot per request (when limited)
    until its response body is closed."""

    _stream_class: type[_ReleasingStream]

    def __init__(self, inner: Any, owner: LoopOwner, limiter: Limiter | None) -> None:
        self.inner = inner
        self.owner = owner
        self.limiter = limiter

    async def handle_async_request(self, request: Any) -> Any:
        # Instead of anyio's "attached to a different loop", a hang, or "Event loop is closed".
        self.owner.check()
        if self.limiter is None:
            return await self.inner.handle_async_request(request)
        permit = await self.limiter.acquire()
        try:
            response = await self.inner.handle_async_request(request)
            if response.status_code == 429:
                await self.limiter.pause(retry_after(response.headers))
        except BaseException:
            await self.limiter.release(permit)
            raise
        # The call is in flight until its body is read (streamed answers take a while).
        response.stream = self._stream_class(response.stream, self.limiter, permit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class LoopTransport(_Sending, httpx.AsyncBaseTransport):
    """An `httpx` transport for one loop's client, holding a slot of `limiter` per request."""

    _stream_class = _ReleasingStream1


class LoopTransport2(_Sending, httpx2.AsyncBaseTransport):
    """The same for `httpx2`, the HTTP library of the current OpenAI and Anthropic SDKs."""

    _stream_class = _ReleasingStream2
