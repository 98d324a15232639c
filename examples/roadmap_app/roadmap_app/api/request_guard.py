"""ASGI middleware that vets request bodies before any route runs: size, media type, strict JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ("MAX_BODY_BYTES", "MAX_DEPTH", "MAX_NUMBER_DIGITS", "RequestGuard")

# The largest valid body (a review's 2000-character feedback, escaped) is far below this.
MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 32
# Python refuses to turn integers of more than 4300 digits into text, so an error message that
# echoes one would fail to render; no field of this API needs more than a few digits.
MAX_NUMBER_DIGITS = 100

Loc = tuple[str | int, ...]


class _Refused:
    """A JSON value the parser met and this API refuses, with the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number; send a finite number")


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused(f"{text} is beyond the range of a 64-bit floating-point number")


def _int(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_DIGITS:
        return _Refused(f"a number of {digits} digits is too long (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def _unicode_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"text contains an unpaired surrogate ({text[exc.start]!r}); send valid Unicode"
    return None


def _first_problem(document: Any) -> tuple[Loc, str] | None:
    """Where the parsed `document` holds something refused, and why (None if nothing is)."""
    pending: list[tuple[Loc, Any]] = [((), document)]
    while pending:
        loc, value = pending.pop()
        if isinstance(value, _Refused):
            return loc, value.reason
        if isinstance(value, str):
            problem = _unicode_problem(value)
            if problem is not None:
                return loc, problem
        elif isinstance(value, (dict, list)):
            if len(loc) >= MAX_DEPTH:
                return loc, f"the JSON document nests deeper than {MAX_DEPTH} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                problem = _unicode_problem(key) if isinstance(key, str) else None
                if problem is not None:
                    return loc, problem
                pending.append(((*loc, key), item))
    return None


def _json_problem(body: bytes) -> tuple[Loc, str] | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (), f"the body is not valid UTF-8 (byte {exc.start}); JSON must be UTF-8"
    try:
        document = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as exc:
        return (), f"JSON decode error: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except RecursionError:
        return (), f"the JSON document nests deeper than {MAX_DEPTH} levels"
    return _first_problem(document)


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class RequestGuard:
    """Answers 413 to a body over `MAX_BODY_BYTES`, 415 to one that is not JSON, and 422 (in
    FastAPI's error shape, `loc` naming the field) to JSON that Python's parser would accept but
    a strict one must not: NaN, ±Infinity, numbers out of range, deep nesting, invalid Unicode.

    FastAPI would let such values reach validation, whose error message then cannot be rendered
    as JSON: a 500 instead of a 422 (issue 14). Requests without a body pass untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(headers := Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        content_type = headers.get("content-type")
        if content_type is None or not _is_json(content_type):
            await _detail(
                415,
                f"send the body as JSON with Content-Type: application/json (got {content_type!r})",
            )(scope, receive, send)
            return
        body = await _read_within_limit(headers, receive)
        if body is None:
            too_large = f"the request body is larger than {MAX_BODY_BYTES} bytes; send less"
            await _detail(413, too_large)(scope, receive, send)
            return
        problem = _json_problem(body)
        if problem is not None:
            loc, message = problem
            error = {"type": "json_invalid", "loc": ["body", *loc], "msg": message}
            await JSONResponse({"detail": [error]}, status_code=422)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


def _detail(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status_code)


async def _read_within_limit(headers: Headers, receive: Receive) -> bytes | None:
    """The whole body, or None as soon as it proves longer than `MAX_BODY_BYTES`."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body already read, then whatever the client sends next."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
