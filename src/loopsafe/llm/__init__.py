"""LLM and HTTP clients as per-loop resources, and limits shared by a whole deployment.

Needs the ``llm`` extra: ``pip install 'loopsafe[llm]'`` (``loopsafe[anthropic]`` for Claude).
"""

import typing as _typing

try:
    # Fail here, with the fix, rather than deep inside.
    import httpx as _httpx  # noqa: F401
    import httpx2 as _httpx2  # noqa: F401
    import openai as _openai  # noqa: F401
    import redis.asyncio as _redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"loopsafe.llm needs httpx, openai and redis ({exc.name} is missing): "
        "pip install 'loopsafe[llm]'"
    ) from exc

from .._deprecated import deprecated_names
from .._public import claim_public_names
from ._clients import get_anthropic as get_anthropic
from ._clients import get_openai as get_openai
from ._errors import LimitTimeoutError as LimitTimeoutError
from ._limit import limit as limit
from ._settings import Limit as Limit
from ._settings import configure as configure

__all__ = (
    "Limit",
    "LimitTimeoutError",
    "configure",
    "get_anthropic",
    "get_openai",
    "limit",
)

claim_public_names(__name__, globals(), __all__)


def _get_http() -> object:
    from ..http import get_http

    return get_http


# Renamed before 1.0; removed in 0.2.0 (see CHANGELOG). A general HTTP client is not an LLM's.
# Typed for type checkers, served with a warning at run time (see loopsafe/__init__.py).
if _typing.TYPE_CHECKING:
    from ..http import get_http as get_http
else:
    __getattr__ = deprecated_names(__name__, {"get_http": ("loopsafe.http.get_http", _get_http)})
del claim_public_names, deprecated_names
