"""Exception types, factored out so every module can raise them without import loops.

Hierarchy::

    LoopsafeError
    ├── ConfigurationError            (also ValueError)    a setting or argument is invalid
    │   ├── ConfigurationTypeError    (also TypeError)     … because it has the wrong type
    │   └── WorkerBudgetError                              loopsafe.celery: concurrency over budget
    ├── NotConfiguredError            (also LookupError)   something used was never configured
    │   └── DatabaseNotConfiguredError (also RuntimeError) loopsafe.db: no URL, no $DATABASE_URL
    ├── NoRunningLoopError            (also RuntimeError)  a loop-local resource asked for outside a loop
    ├── WrongLoopError                (also RuntimeError)  a resource made on one loop used on another
    ├── PoolExhaustedError            (also TimeoutError)  loopsafe.db: no connection in time
    ├── SubscriptionLostError         (also redis ConnectionError)  loopsafe.redis: lost for good
    ├── UnsupportedPoolError          (also RuntimeError)  loopsafe.celery: a pool it cannot serve
    ├── LimitTimeoutError             (also TimeoutError)  loopsafe.llm: no limit slot within max_wait
    ├── BrokerUnavailableError        (also ConnectionError) loopsafe.celery: send() reached no broker
    ├── ResultTimeoutError            (also TimeoutError)  loopsafe.celery: result() waited too long
    └── BoundExceededError            (also TimeoutError)  internal: an awaited step overran its bound

Each error is public in the package of the part that raises it: the general ones in `loopsafe`,
`PoolExhaustedError` and `DatabaseNotConfiguredError` in `loopsafe.db`, `SubscriptionLostError`
in `loopsafe.redis`, `UnsupportedPoolError` and `WorkerBudgetError` in `loopsafe.celery`,
`LimitTimeoutError` in `loopsafe.llm`. `SubscriptionLostError` is defined in
``redis/_subscribe.py``, because it also subclasses redis-py's ``ConnectionError`` and
``import loopsafe`` must not import redis. The built-in second bases are what each error used to
be, so ``except ValueError`` / ``except LookupError`` / ``except TimeoutError`` code keeps
working. The ``ValueError`` that `loopsafe.redis.publish` logs for a message it cannot send never
leaves publish.

No LoopsafeError is a transient fault: loopsafe.db never retries one, whatever its built-in bases.
"""

from __future__ import annotations

__all__ = (
    "BoundExceededError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ConfigurationTypeError",
    "DatabaseNotConfiguredError",
    "LimitTimeoutError",
    "LoopsafeError",
    "NoRunningLoopError",
    "NotConfiguredError",
    "PoolExhaustedError",
    "ResultTimeoutError",
    "UnsupportedPoolError",
    "WorkerBudgetError",
    "WrongLoopError",
)


class LoopsafeError(Exception):
    """Base class of every error loopsafe raises.

    .. versionadded:: 0.1.0
    """


class ConfigurationError(LoopsafeError, ValueError):
    """A setting or argument given to loopsafe is invalid; the message names it and what it takes.

    Also a `ValueError`, so code that caught these as one keeps working. Raised where the setting is
    given (``configure()``, a constructor), so a typo fails at start-up, not on first use.

    .. versionadded:: 0.1.0
    """


class ConfigurationTypeError(ConfigurationError, TypeError):
    """A setting or argument given to loopsafe has the wrong type.

    A `ConfigurationError` that is also a `TypeError`, so code that caught these as one keeps
    working.

    .. versionadded:: 0.1.0
    """


class NotConfiguredError(LoopsafeError, LookupError):
    """Something was used that was never configured: a provider key, a named client or limit.

    Also a `LookupError`, so code that caught these as one keeps working. The message says which
    ``configure()`` argument or environment variable provides it.

    .. versionadded:: 0.1.0
    """


class NoRunningLoopError(LoopsafeError, RuntimeError):
    """A loop-local resource was requested where no event loop is running.

    Raised by `LoopLocal.get()` (and everything built on it) when called from synchronous code.

    .. versionadded:: 0.1.0
    """


class WrongLoopError(LoopsafeError, RuntimeError):
    """A resource created on one event loop was used on another.

    Raised instead of the driver's own cryptic failure ("attached to a different loop",
    "another operation is in progress") or a hang.

    .. versionadded:: 0.1.0
    """


class PoolExhaustedError(LoopsafeError, TimeoutError):
    """A connection pool held to a `PoolBudget` had no free connection within `pool_timeout`.

    Waiting is preferred to exceeding the budget; this is raised only once the wait is over, and
    never retried (it is a decision, not a fault). Public as ``loopsafe.db.PoolExhaustedError``;
    `loopsafe.fastapi.install` answers it with 503 + ``Retry-After``.

    .. versionadded:: 0.1.0
    """


class DatabaseNotConfiguredError(NotConfiguredError, RuntimeError):
    """No database URL was given and ``$DATABASE_URL`` is not set.

    A `NotConfiguredError` (hence a `LookupError`), and still a `RuntimeError`.

    .. versionadded:: 0.1.0
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


class UnsupportedPoolError(LoopsafeError, RuntimeError):
    """The Celery worker uses a pool that loopsafe.celery cannot serve.

    gevent and eventlet always; with ``install(app, loop="process")`` also pools loopsafe does
    not know. Raised when the worker starts, so a misconfigured worker never takes a task.

    .. versionadded:: 0.1.0
    """


class WorkerBudgetError(ConfigurationError):
    """The worker's pool and concurrency need more than the database's `PoolBudget` allows.

    Raised when the worker starts, before it takes a task. A `ConfigurationError` (and, as
    before, a `ValueError`).

    .. versionadded:: 0.1.0
    """


class LimitTimeoutError(LoopsafeError, TimeoutError):
    """A call waited `Limit.max_wait` seconds for a slot of a deployment-wide limit and got none.

    Nothing was sent: the call never reached the provider. Raise `max_wait`, raise the limit (if
    the provider allows it), or send less work at once.

    .. versionadded:: 0.1.0
    """


class BrokerUnavailableError(LoopsafeError, ConnectionError):
    """`loopsafe.celery.send` could not hand the message to the broker within its time limit.

    The message may or may not have been queued (a publish interrupted at its deadline cannot be
    told apart); check that the broker is running and reachable, or raise the send timeout.

    .. versionadded:: 0.1.0
    """


class ResultTimeoutError(LoopsafeError, TimeoutError):
    """`loopsafe.celery.result` waited `timeout` seconds and the task had not finished.

    The task keeps running; wait again, or revoke it.

    .. versionadded:: 0.1.0
    """
