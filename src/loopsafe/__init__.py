"""loopsafe: async resources that stay correct across event loops, threads and forked processes."""

import typing as _typing

from . import _errors
from ._bridge._run_async import close_all_loops as close_all_loops
from ._bridge._run_async import close_thread_loop as close_thread_loop
from ._bridge._run_async import run_async as run_async
from ._bridge._run_async import use_process_loop as use_process_loop
from ._deprecated import deprecated_names
from ._errors import ConfigurationError as ConfigurationError
from ._errors import ConfigurationTypeError as ConfigurationTypeError
from ._errors import LoopsafeError as LoopsafeError
from ._errors import NoRunningLoopError as NoRunningLoopError
from ._errors import NotConfiguredError as NotConfiguredError
from ._errors import WrongLoopError as WrongLoopError
from ._public import claim_public_names
from ._registry import LoopLocal as LoopLocal
from ._registry import RegistryStats as RegistryStats
from ._registry import aclose_all as aclose_all
from ._registry import loop_local as loop_local
from ._registry import reset_after_fork as reset_after_fork
from ._registry import stats as stats

__version__ = "0.1.0"

__all__ = (
    "ConfigurationError",
    "ConfigurationTypeError",
    "LoopLocal",
    "LoopsafeError",
    "NoRunningLoopError",
    "NotConfiguredError",
    "RegistryStats",
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

# Renamed before 1.0; removed in 0.2.0 (see CHANGELOG). Errors live with the part that raises them.
# Type checkers see the old names as what they are (not as Any through __getattr__, which would
# hide typos in every other attribute); at run time only __getattr__ serves them, with a warning.
if _typing.TYPE_CHECKING:
    from ._errors import PoolExhaustedError as PoolExhaustedError
else:
    __getattr__ = deprecated_names(
        __name__,
        {
            "PoolExhaustedError": (
                "loopsafe.db.PoolExhaustedError",
                lambda: _errors.PoolExhaustedError,
            )
        },
    )
del claim_public_names, deprecated_names
