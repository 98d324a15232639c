"""`install(app)` and what it wires: the lifespan, the 503 on overload, the metrics route."""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._errors import ConfigurationError, ConfigurationTypeError, PoolExhaustedError
from ._log import get_logger
from ._registry import aclose_all

__all__ = ("RETRY_AFTER", "check_retry_after", "install", "overload_response", "shed")

_log = get_logger("loopsafe.fastapi")

#: Seconds a client is told to wait before retrying after a 503, unless `install` is told otherwise.
RETRY_AFTER = 1.0


@dataclass(frozen=True)
class _Options:
    retry_after: float
    metrics: str | None


# Which apps have loopsafe installed, and how: weak, so a test's throwaway apps are not kept.
_installed: weakref.WeakKeyDictionary[Starlette, _Options] = weakref.WeakKeyDictionary()


def install(
    app: Starlette, *, retry_after: float = RETRY_AFTER, metrics: str | None = None
) -> None:
    """Wire loopsafe into `app` (FastAPI or Starlette): close every resource, shed load politely.

    - **Lifespan**: wraps the app's own lifespan (``FastAPI(lifespan=...)``, startup/shutdown
      handlers), never replaces it. Your shutdown code runs first and may still use loopsafe's
      resources; then every loop-local resource of the server's loop (database engines, Redis
      and LLM/HTTP clients, your own `loop_local` ones) is closed inside that loop, so servers
      see clean disconnects instead of connections dropped at garbage collection.
    - **Overload**: `loopsafe.db.PoolExhaustedError` becomes ``503 Service Unavailable`` with
      ``Retry-After`` (`retry_after` seconds, rounded up) and a JSON body
      ``{"error": "pool_exhausted", ...}`` instead of a 500: the service is busy, not broken.
    - **Metrics** (optional): with ``metrics="/metrics"`` the app serves prometheus-client's
      registry at that path, with loopsafe's pool collector registered once per process
      (needs ``pip install 'loopsafe[metrics]'``).

    Call it once, before the app starts. Installing again with the same options does nothing;
    with other options it raises `ConfigurationError`, since one of them would silently lose.

    Raises `ConfigurationError` (a `ValueError`) for a `retry_after` that is not a finite number
    of seconds > 0, a `metrics` path that does not start with ``/``, or a second install with
    other options; `ConfigurationTypeError` for an `app` that is not a Starlette/FastAPI app;
    `ImportError` naming the extra when ``metrics`` is asked for without prometheus-client.

    .. versionadded:: 0.1.0
    """
    if not isinstance(app, Starlette):
        raise ConfigurationTypeError(
            f"loopsafe.fastapi.install() needs a FastAPI or Starlette app, got {app!r}"
        )
    options = _Options(check_retry_after(retry_after), _check_metrics_path(metrics))
    previous = _installed.get(app)
    if previous is not None:
        if previous == options:
            return
        raise ConfigurationError(
            f"loopsafe.fastapi.install() was already called for this app with "
            f"retry_after={previous.retry_after:g}, metrics={previous.metrics!r}; now with "
            f"retry_after={options.retry_after:g}, metrics={options.metrics!r}. Call it once, "
            "with the options you want."
        )
    if options.metrics is not None:
        app.add_route(options.metrics, _metrics_endpoint(), include_in_schema=False)
    app.add_exception_handler(PoolExhaustedError, _overload_handler(options.retry_after))
    app.router.lifespan_context = _closing(app.router.lifespan_context)
    _installed[app] = options
    _log.debug(
        "loopsafe.fastapi_installed", retry_after=options.retry_after, metrics=options.metrics
    )


def check_retry_after(retry_after: object) -> float:
    if isinstance(retry_after, bool) or not isinstance(retry_after, int | float):
        raise ConfigurationTypeError(
            f"retry_after must be a number of seconds > 0, got {retry_after!r}"
        )
    if not math.isfinite(retry_after) or retry_after <= 0:
        raise ConfigurationError(
            f"retry_after must be a number of seconds > 0, got {retry_after!r}"
        )
    return float(retry_after)


def _check_metrics_path(metrics: object) -> str | None:
    if metrics is None:
        return None
    if not isinstance(metrics, str) or not metrics.startswith("/"):
        raise ConfigurationError(
            f"metrics must be None or a URL path such as '/metrics', got {metrics!r}"
        )
    return metrics


def _closing(inner: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]) -> Any:
    """`inner` lifespan, then every loopsafe resource of the server's loop closed in that loop."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        try:
            async with inner(app) as state:
                # Starlette's lifespan state (a mapping the app's lifespan yields) passes through.
                yield state
        finally:
            # Isolated and bounded per resource: one that fails or hangs is logged and the
            # others still close (see aclose_all).
            await aclose_all()
            _log.debug("loopsafe.fastapi_resources_closed")

    return lifespan


def overload_response(retry_after: float) -> Response:
    """The 503 an exhausted pool answers with (shared by the deprecated ``loopsafe.db`` names)."""
    return JSONResponse(
        {
            "detail": "The database is busy: no connection became free in time. Retry shortly.",
            "error": "pool_exhausted",
        },
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def shed(request: Request, exc: Exception, retry_after: float) -> Response:
    """Log a request shed for overload and answer it with `overload_response`."""
    _log.warning(
        "loopsafe.db.request_shed",
        path=request.url.path,
        method=request.method,
        # The message's first clause only: the rest names the budget, useful in logs once.
        error=str(exc).split(":", 1)[0],
    )
    return overload_response(retry_after)


def _overload_handler(retry_after: float) -> Callable[[Request, Exception], Any]:
    async def handler(request: Request, exc: Exception) -> Response:
        return shed(request, exc, retry_after)

    return handler


@functools.cache
def _register_pool_collector() -> None:
    # Once per process however many apps are built (tests build many); without loopsafe.db's
    # extra there are no pools to report, and the registry is served as it is.
    try:
        from .db import metrics as pool_metrics
    except ImportError:
        return
    pool_metrics.register()


def _metrics_endpoint() -> Callable[[Request], Any]:
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    except ImportError as error:
        raise ImportError(
            "loopsafe.fastapi.install(app, metrics=...) needs prometheus-client: "
            "pip install 'loopsafe[metrics]'"
        ) from error
    _register_pool_collector()

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return metrics
