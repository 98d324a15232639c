"""Graceful overload in FastAPI/Starlette: an exhausted pool answers 503 with Retry-After."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .._errors import PoolExhaustedError
from .._log import get_logger

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ("RETRY_AFTER", "install_fastapi", "overload_handler")

_log = get_logger("loopsafe.db")

#: Seconds a client is told to wait before retrying, by default.
RETRY_AFTER = 1.0


def _response(retry_after: float) -> Response:
    # Imported here: loopsafe.db must import without Starlette installed.
    from starlette.responses import JSONResponse

    return JSONResponse(
        {
            "detail": "The database is busy: no connection became free in time. Retry shortly.",
            "error": "pool_exhausted",
        },
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def _shed(request: Request, exc: Exception, retry_after: float) -> Response:
    _log.warning(
        "loopsafe.db.request_shed",
        path=request.url.path,
        method=request.method,
        error=str(exc).split(":", 1)[0],
    )
    return _response(retry_after)


async def overload_handler(request: Request, exc: Exception) -> Response:
    """Exception handler turning `PoolExhaustedError` into ``503 Service Unavailable`` with
    ``Retry-After: 1``, instead of a 500: the service is busy, not broken.

    Register it with ``app.add_exception_handler(PoolExhaustedError, overload_handler)``, or use
    `install_fastapi`.

    .. versionadded:: 0.1.0
    """
    return _shed(request, exc, RETRY_AFTER)


def install_fastapi(app: Any, *, retry_after: float = RETRY_AFTER) -> None:
    """Make `app` (FastAPI or Starlette) answer `PoolExhaustedError` with 503 + ``Retry-After``.

    Raises `ValueError` for a ``retry_after`` that is not a positive number.

    .. versionadded:: 0.1.0
    """
    if (
        isinstance(retry_after, bool)
        or not isinstance(retry_after, (int, float))
        or not retry_after > 0
    ):
        raise ValueError(f"retry_after must be a number of seconds > 0, got {retry_after!r}")

    async def handler(request: Request, exc: Exception) -> Response:
        return _shed(request, exc, retry_after)

    app.add_exception_handler(PoolExhaustedError, handler)
