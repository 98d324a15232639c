"""loopsafe.celery: run async code from Celery tasks on persistent, fork-safe worker loops.

Importing it does not import Celery. `run_async` is ``loopsafe.run_async`` (the same object),
re-exported here; `install` and `async_task` need the extra: ``pip install 'loopsafe[celery]'``.
"""

import warnings as _warnings

from .._bridge._run_async import run_async as run_async
from .._errors import BrokerUnavailableError as BrokerUnavailableError
from .._errors import ResultTimeoutError as ResultTimeoutError
from .._public import claim_public_names
from ._pool import UnsupportedPoolError as UnsupportedPoolError
from ._result import result as result
from ._send import send as send
from ._signals import WorkerBudgetError as WorkerBudgetError
from ._signals import install as install
from ._task import AsyncTask as AsyncTask
from ._task import async_task as async_task

__all__ = (
    "AsyncTask",
    "BrokerUnavailableError",
    "ResultTimeoutError",
    "UnsupportedPoolError",
    "WorkerBudgetError",
    "async_task",
    "install",
    "result",
    "run_async",
    "send",
)

claim_public_names(__name__, globals(), __all__)
del claim_public_names

#: Names that moved to the core package with the bridge; removed in the next minor version.
_MOVED = {
    "close_all_loops": "loopsafe.close_all_loops",
    "close_thread_loop": "loopsafe.close_thread_loop",
}


def __getattr__(name: str) -> object:
    replacement = _MOVED.get(name)
    if replacement is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _warnings.warn(
        f"loopsafe.celery.{name} is deprecated and will be removed in the next minor version: use "
        f"{replacement} (the same function; run_async's loops are not Celery's).",
        DeprecationWarning,
        stacklevel=2,
    )
    from .. import _bridge

    return getattr(_bridge._run_async, name)
