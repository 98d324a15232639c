"""Unknown query parameters answer 422, as unknown body fields do (`?offset=20` was ignored)."""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

__all__ = ("reject_unknown_query",)


def _declared(dependant: Dependant) -> set[str]:
    """The query parameters a route and its dependencies declare (FastAPI's helper for this
    moved between releases; the dependant's own fields have not)."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """Router dependency: 422 in FastAPI's error shape for each query parameter the route does
    not declare, so a typo or an unsupported filter is reported instead of silently ignored."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _declared(route.dependant)
    unknown = [name for name in dict.fromkeys(request.query_params) if name not in known]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "Extra inputs are not permitted",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )
