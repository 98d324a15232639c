"""loopsafe.celery: run async code from Celery tasks on persistent, fork-safe worker loops.

Importing it does not import Celery: `run_async` works in any synchronous code. `install` and
`async_task` need the extra: ``pip install 'loopsafe[celery]'``.
"""

from .._errors import BrokerUnavailableError as BrokerUnavailableError
from .._errors import ResultTimeoutError as ResultTimeoutError
from .._public import claim_public_names
from ._pool import UnsupportedPoolError as UnsupportedPoolError
from ._result import result as result
from ._run_async import close_all_loops as close_all_loops
from ._run_async import close_thread_loop as close_thread_loop
from ._run_async import run_async as run_async
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
    "close_all_loops",
    "close_thread_loop",
    "install",
    "result",
    "run_async",
    "send",
)

claim_public_names(__name__, globals(), __all__)
del claim_public_names
