"""Exception types of loopsafe.llm.

Hierarchy::

    LoopsafeError
    └── LimitTimeoutError   (also TimeoutError)  no slot of a deployment-wide limit within max_wait
"""

from __future__ import annotations

from .._errors import LoopsafeError

__all__ = ("LimitTimeoutError",)


class LimitTimeoutError(LoopsafeError, TimeoutError):
    """A call waited `Limit.max_wait` seconds for a slot of a deployment-wide limit and got none.

    Nothing was sent: the call never reached the provider. Raise `max_wait`, raise the limit (if
    the provider allows it), or send less work at once. Since 0.2.0.
    """
