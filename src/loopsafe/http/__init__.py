"""loopsafe.http: a per-loop httpx client for any HTTP API, limited deployment-wide if asked.

Needs the ``llm`` extra for now (it brings httpx and the limits): ``pip install 'loopsafe[llm]'``.
Clients are named and set up by ``loopsafe.llm.configure(http={name: {...httpx options}},
limits={name: Limit(...)})``.
"""

try:
    import httpx as _httpx
except ImportError as _error:  # pragma: no cover - exercised only without the extra
    raise ImportError("loopsafe.http needs httpx: pip install 'loopsafe[llm]'") from _error

from .._public import claim_public_names
from ._client import get_http as get_http

__all__ = ("get_http",)

claim_public_names(__name__, globals(), __all__)
del claim_public_names, _httpx
