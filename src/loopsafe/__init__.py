"""loopsafe: async resources that stay correct across event loops, threads and forked processes."""

from ._bridge._run_async import close_all_loops as close_all_loops
from ._bridge._run_async import close_thread_loop as close_thread_loop
from ._bridge._run_async import run_async as run_async
from ._bridge._run_async import use_process_loop as use_process_loop
from ._errors import LoopsafeError as LoopsafeError
from ._errors import NoRunningLoopError as NoRunningLoopError
from ._errors import PoolExhaustedError as PoolExhaustedError
from ._errors import WrongLoopError as WrongLoopError
from ._public import claim_public_names
from ._registry import LoopLocal as LoopLocal
from ._registry import aclose_all as aclose_all
from ._registry import loop_local as loop_local
from ._registry import reset_after_fork as reset_after_fork
from ._registry import stats as stats

__version__ = "0.1.0"

__all__ = (
    "LoopLocal",
    "LoopsafeError",
    "NoRunningLoopError",
    "PoolExhaustedError",
    "WrongLoopError",
    "aclose_all",
    "close_all_loops",
    "close_thread_loop",
    "loop_local",
    "reset_after_fork",
    "run_async",
    "stats",
    "use_process_loop",
)

claim_public_names(__name__, globals(), __all__)
del claim_public_names
