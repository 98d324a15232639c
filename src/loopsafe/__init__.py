"""loopsafe: async resources that stay correct across event loops, threads and forked processes."""

from ._errors import LoopsafeError as LoopsafeError
from ._errors import NoRunningLoopError as NoRunningLoopError
from ._errors import PoolExhaustedError as PoolExhaustedError
from ._errors import WrongLoopError as WrongLoopError
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

# Reprs, tracebacks and docs name the public location (loopsafe.LoopLocal), not the private module.
for _name in __all__:
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith("loopsafe._"):
        _value.__module__ = __name__
del _name, _value
