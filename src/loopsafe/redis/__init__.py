"""Per-loop Redis clients, notifications that never break their caller, subscriptions that clean up.

Needs the ``redis`` extra: ``pip install 'loopsafe[redis]'``.
"""

try:
    import redis.asyncio  # noqa: F401  (fail here, with the fix, rather than deep inside)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "loopsafe.redis needs redis-py (redis>=6.1): pip install 'loopsafe[redis]'"
    ) from exc

from .._public import claim_public_names
from ._client import configure as configure
from ._client import get_redis as get_redis
from ._publish import publish as publish
from ._subscribe import Message as Message
from ._subscribe import SubscriptionLostError as SubscriptionLostError
from ._subscribe import subscribe as subscribe

__all__ = (
    "Message",
    "SubscriptionLostError",
    "configure",
    "get_redis",
    "publish",
    "subscribe",
)

claim_public_names(__name__, globals(), __all__)
del claim_public_names
