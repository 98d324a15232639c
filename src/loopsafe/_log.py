"""structlog loggers routed through stdlib logging, and DSN redaction for anything logged."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

__all__ = ("get_logger", "redact_dsn")

# A library never prints unless the application configured logging: without this, stdlib's
# "last resort" handler would write our warnings to stderr.
logging.getLogger("loopsafe").addHandler(logging.NullHandler())

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")
_PASSWORD_PARAM = re.compile(r"(?P<head>[?&](?:password|pass|pwd)=)(?P<pw>[^&\s]*)", re.IGNORECASE)


def redact_dsn(dsn: object) -> str:
    """Return `dsn` as text with any password replaced by ``***``.

    Accepts strings and objects such as `sqlalchemy.URL` (whose ``str()`` is rendered first).
    """
    text = (
        dsn.render_as_string(hide_password=True) if hasattr(dsn, "render_as_string") else str(dsn)
    )
    text = _PASSWORD_IN_URL.sub(r"\g<head>***@", text)
    return _PASSWORD_PARAM.sub(r"\g<head>***", text)


def _to_stdlib(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> Mapping[str, Any]:
    """Render ``event k=v …`` as the message and keep the fields on the record for handlers."""
    event = str(event_dict.pop("event", ""))
    fields = dict(event_dict)
    rendered = " ".join(f"{key}={value!r}" for key, value in fields.items())
    return {
        "msg": f"{event} {rendered}" if rendered else event,
        "extra": {"loopsafe_event": event, "loopsafe_fields": fields},
    }


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger over the stdlib logger `name` (under ``loopsafe``).

    It does not depend on the application's structlog configuration: events are filtered by the
    stdlib level first (no cost when disabled), then handed to stdlib logging. Handlers can read
    ``record.loopsafe_event`` (for example ``"loopsafe.instance_created"``) and
    ``record.loopsafe_fields``.
    """
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, _to_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return logger
