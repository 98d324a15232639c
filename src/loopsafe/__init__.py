"""loopsafe: async resources that stay correct across event loops, threads and forked processes."""

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
    "loop_local",
    "reset_after_fork",
    "stats",
)

claim_public_names(__name__, globals(), __all__)
del claim_public_names
