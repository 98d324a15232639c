"""loopsafe.fastapi: one `install(app)` that closes every resource and answers overload with 503.

Needs the ``fastapi`` extra: ``pip install 'loopsafe[fastapi]'`` (Starlette alone is enough).
"""

try:
    import starlette as _starlette
except ImportError as _error:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "loopsafe.fastapi needs FastAPI (or Starlette): pip install 'loopsafe[fastapi]'"
    ) from _error

from ._fastapi import install as install
from ._public import claim_public_names

__all__ = ("install",)

claim_public_names(__name__, globals(), __all__)
del claim_public_names, _starlette
