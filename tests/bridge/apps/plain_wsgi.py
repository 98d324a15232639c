"""A WSGI app without loopsafe: what gunicorn itself leaves behind, told apart from the recipes'.

``/leak`` drops an open socket, as a leaking app would: its ResourceWarning must still show.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/leak":
        socket.socket()  # unclosed, for the garbage collector
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
