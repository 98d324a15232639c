"""`Allow` that lists every method of a path, and OPTIONS answered with it (RFC 9110 §9.3.7)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

__all__ = ("answer_allowed_methods",)

_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """The methods some route serves at the request's path (routers may nest, so ask routing)."""
    methods = {"OPTIONS"}
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            methods.add(method)
    return ", ".join(sorted(methods))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    allow = {"Allow": _allowed(request)}
    if request.method == "OPTIONS":
        return Response(status_code=204, headers=allow)
    return await http_exception_handler(request, HTTPException(405, exc.detail, headers=allow))


def answer_allowed_methods(app: FastAPI) -> None:
    """Make `app`'s 405 answers list all of the path's methods, and OPTIONS a 204 with them.

    Starlette names only the methods of the first route whose path matches, so a path served by
    two routes (GET and POST /api/v1/roadmaps) advertised `Allow: POST` (issue 14).
    """
    app.add_exception_handler(405, _method_not_allowed)
