"""`PoolStatus`: the typed row `pool_status()` returns, one key per figure a health check reads."""

from __future__ import annotations

# Not typing.TypedDict: pydantic (FastAPI response models) accepts only typing_extensions' before
# Python 3.12, and a health endpoint returning pool_status() is the first use. SQLAlchemy depends
# on typing_extensions, so the db extra has it.
from typing_extensions import TypedDict

__all__ = ("PoolStatus",)


class PoolStatus(TypedDict):
    """Pool figures summed over a `Database`'s live loops in this process.

    ``loops``: live engines; ``pool_size``, ``max_overflow``: their configured sizes;
    ``checked_out``, ``checked_in``: connections that exist and are in use, or idle (a checkout
    still waiting for a connection is counted in ``waiting``, never here); ``overflow``:
    connections open beyond ``pool_size``; ``capacity``: the most connections this process may
    open (with a budget, its per-process share, also before the first loop; 0 means unbounded,
    a NullPool without budget); ``usage``:
    ``checked_out / capacity`` (0.0 when unbounded); ``waiting``: checkouts waiting for a
    connection now; ``longest_wait``: seconds the oldest of them has waited.
    """

    loops: int
    pool_size: int
    max_overflow: int
    checked_out: int
    checked_in: int
    overflow: int
    capacity: int
    usage: float
    waiting: int
    longest_wait: float
