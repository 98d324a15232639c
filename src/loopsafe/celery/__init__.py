"""loopsafe.celery: run async code from Celery tasks on persistent, fork-safe worker loops.

Importing it does not import Celery. `run_async` is ``loopsafe.run_async`` (the same object),
re-exported here; `install` and `async_task` need the extra: ``pip install 'loopsafe[celery]'``.
"""

import typing as _typing

from .._bridge import _run_async
from .._bridge._run_async import run_async as run_async
from .._deprecated import deprecated_names
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

# Moved to the core package with the bridge (run_async's loops are not Celery's); removed in
# 0.2.0. Typed for type checkers, served with a warning at run time (see loopsafe/__init__.py).
if _typing.TYPE_CHECKING:
    from .._bridge._run_async import close_all_loops as close_all_loops
    from .._bridge._run_async import close_thread_loop as close_thread_loop
else:
    __getattr__ = deprecated_names(
        __name__,
        {
            "close_all_loops": ("loopsafe.close_all_loops", lambda: _run_async.close_all_loops),
            "close_thread_loop": (
                "loopsafe.close_thread_loop",
                lambda: _run_async.close_thread_loop,
            ),
        },
    )
del claim_public_names, deprecated_names
