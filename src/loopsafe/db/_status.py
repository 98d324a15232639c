"""`PoolStatus`: the typed row `pool_status()` returns, one key per figure a health check reads."""

from __future__ import annotations

# Not typing.TypedDict: pydantic (FastAPI response models) accepts only typing_extensions' before
# Python 3.12, and a health endpoint returning pool_status() is the first use. SQLAlchemy depends
# on typing_extensions, so the db extra has it.
from typing_extensions import NotRequired, TypedDict

__all__ = ("LedgerStatus", "PoolStatus")


class LedgerStatus(TypedDict):
    """The elastic ledger as this process last saw it (refreshed by its heartbeat, every 0.3 s).

    ``plan``, ``role``: the plan's name and this process's role; ``mode``: ``"ledger"``, or
    ``"fallback"`` while Redis is unreachable; ``limit``: connections the elastic roles share;
    ``held``: leases this process holds; ``served_at_once``/``served_after_wait``: this
    process's checkouts that got a lease on their first ask / after waiting in line;
    ``fallback_share``: what it would allow itself without
    Redis; ``in_use``, ``waiting``, ``members`` (live processes) and ``headroom``, by role,
    deployment-wide.
    """

    plan: str
    role: str
    mode: str
    limit: int
    held: int
    served_at_once: int
    served_after_wait: int
    fallback_share: int
    in_use: dict[str, int]
    waiting: dict[str, int]
    members: dict[str, int]
    headroom: dict[str, int]


class PoolStatus(TypedDict):
    """Pool figures summed over a `Database`'s live loops in this process.

    ``loops``: live engines; ``pool_size``, ``max_overflow``: their configured sizes;
    ``checked_out``, ``checked_in``: connections in use and idle; ``overflow``: connections open
    beyond ``pool_size``; ``capacity``: the most connections this process may open (with a
    budget, its per-process share; 0 means unbounded, a NullPool without budget); ``usage``:
    ``checked_out / capacity`` (0.0 when unbounded); ``waiting``: checkouts waiting for a
    connection now; ``longest_wait``: seconds the oldest of them has waited; ``ledger`` (elastic
    budgets only): the deployment-wide ledger, see `LedgerStatus`.
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
    ledger: NotRequired[LedgerStatus]
