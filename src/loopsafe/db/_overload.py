"""Deprecated overload names of loopsafe.db, kept working until 0.2 (`loopsafe.fastapi.install`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import PoolExhaustedError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ("install_fastapi", "overload_handler")


async def overload_handler(request: Request, exc: Exception) -> Response:
    """Exception handler turning `PoolExhaustedError` into ``503`` with ``Retry-After: 1``.

    .. deprecated:: 0.1.0
       Use `loopsafe.fastapi.install` (it registers this handler, and closes resources too).
    """
    # Imported here: loopsafe.db must import without Starlette installed.
    from .._fastapi import RETRY_AFTER, shed

    return shed(request, exc, RETRY_AFTER)


def install_fastapi(app: Any, *, retry_after: float = 1.0) -> None:
    """Make `app` answer `PoolExhaustedError` with 503 + ``Retry-After`` (and nothing else).

    .. deprecated:: 0.1.0
       Use `loopsafe.fastapi.install`, which also closes every resource at shutdown.
    """
    from .._fastapi import check_retry_after, shed

    checked = check_retry_after(retry_after)

    async def handler(request: Request, exc: Exception) -> Response:
        return shed(request, exc, checked)

    app.add_exception_handler(PoolExhaustedError, handler)
