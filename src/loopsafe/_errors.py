"""Exception types, factored out so every module can raise them without import loops.

Hierarchy::

    LoopsafeError
    ├── NoRunningLoopError          (also RuntimeError)  a loop-local resource asked for outside a loop
    ├── WrongLoopError              (also RuntimeError)  a resource made on one loop used on another
    ├── PoolExhaustedError          (also TimeoutError)  a budgeted pool had no connection in time
    ├── DatabaseNotConfiguredError  (also RuntimeError)  loopsafe.db: no URL and no $DATABASE_URL
    ├── SubscriptionLostError       (also redis ConnectionError)  loopsafe.redis: lost for good
    ├── UnsupportedPoolError        (also RuntimeError)  loopsafe.celery: gevent/eventlet workers
    └── BoundExceededError          (also TimeoutError)  internal: an awaited step overran its bound

Defined elsewhere: `SubscriptionLostError` in ``redis/_subscribe.py``, because it also subclasses
redis-py's ``ConnectionError`` and ``import loopsafe`` must not import redis; `UnsupportedPoolError`
in ``celery/_signals.py``. The ``ValueError`` that `loopsafe.redis.publish` logs for a message it
cannot send never leaves publish.
"""

from __future__ import annotations

__all__ = (
    "BoundExceededError",
    "DatabaseNotConfiguredError",
    "LoopsafeError",
    "NoRunningLoopError",
    "PoolExhaustedError",
    "WrongLoopError",
)


class LoopsafeError(Exception):
    """Base class of every error loopsafe raises.

    Since 0.1.0.
    """


class NoRunningLoopError(LoopsafeError, RuntimeError):
    """A loop-local resource was requested where no event loop is running.

    Raised by `LoopLocal.get()` (and everything built on it) when called from synchronous code.
    Since 0.1.0.
    """


class WrongLoopError(LoopsafeError, RuntimeError):
    """A resource created on one event loop was used on another.

    Raised instead of the driver's own cryptic failure ("attached to a different loop",
    "another operation is in progress") or a hang. Since 0.1.0.
    """


class PoolExhaustedError(LoopsafeError, TimeoutError):
    """A connection pool held to a `PoolBudget` had no free connection within `pool_timeout`.

    Waiting is preferred to exceeding the budget; this is raised only once the wait is over.
    Since 0.1.0.
    """


class DatabaseNotConfiguredError(LoopsafeError, RuntimeError):
    """No database URL was given and ``$DATABASE_URL`` is not set.

    Since 0.1.0.
    """


class BoundExceededError(LoopsafeError, TimeoutError):
    """An awaited step did not finish within its time bound (internal: callers translate it).

    ``settled`` is False when the cancelled step ignored cancellation past its grace period and
    was left running on its loop.
    """

    def __init__(self, timeout: float, grace: float, *, settled: bool) -> None:
        self.timeout = timeout
        self.settled = settled
        detail = (
            ""
            if settled
            else f"; it ignored cancellation for {grace:g} s more and was left running"
        )
        super().__init__(f"did not finish within {timeout:g} s{detail}")
