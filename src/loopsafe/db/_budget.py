"""PoolBudget: one server's connection limit shared out across every process and event loop."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from .. import _validate

__all__ = ("PoolBudget",)


def _usable(max_connections: int, reserve: float) -> int:
    """``floor(max_connections × (1 − reserve))``, computed on the decimal the user wrote.

    Float arithmetic would turn ``100 × (1 − 0.43)`` into 56.99999…; the decimal of ``str(reserve)``
    is what the user meant, and flooring it never rounds a promise up.
    """
    return math.floor(Decimal(max_connections) * (1 - Decimal(str(reserve))))


def _min_max_connections(needed: int, reserve: float) -> int:
    """The smallest ``max_connections`` whose usable share is at least `needed`."""
    candidate = math.ceil(Fraction(needed) / (1 - Fraction(str(reserve))))
    while _usable(candidate, reserve) < needed:  # pragma: no cover - guards rounding only
        candidate += 1
    return candidate


@dataclass(frozen=True)
class PoolBudget:
    """Share a server's connection limit across every process and event loop of an application.

    ``processes × loops_per_process × (pool_size + max_overflow)`` never exceeds
    ``max_connections × (1 − reserve)``. Each loop gets the same share: ``pool_size`` connections
    kept warm plus ``max_overflow`` opened under load and closed when returned.

    With several kinds of process (web, workers with more loops), give every process the same
    ``max_connections`` and the *total* ``processes`` across all of them, and its own
    ``loops_per_process``: each process then gets about ``usable / processes`` connections, split
    between its loops, and the sum over all processes still fits (``python -m loopsafe budget``
    prints the table).

    Raises `ValueError` for invalid numbers, or when the budget cannot give every loop at least
    one connection (the message says what would fit). Since 0.1.0.
    """

    max_connections: int
    processes: int
    loops_per_process: int = 1
    reserve: float = 0.1

    def __post_init__(self) -> None:
        for field in ("max_connections", "processes", "loops_per_process"):
            _validate.count(f"PoolBudget.{field}", getattr(self, field), minimum=1)
        reserve = self.reserve
        if isinstance(reserve, bool) or not isinstance(reserve, (int, float)):
            raise TypeError(f"PoolBudget.reserve must be a float in [0, 1), got {reserve!r}")
        if not 0 <= reserve < 1:
            raise ValueError(
                f"PoolBudget.reserve is the fraction of connections kept back for admin work and "
                f"must be in [0, 1), got {reserve!r}"
            )
        loops = self.processes * self.loops_per_process
        usable = self.usable
        if usable < loops:
            fits = [f"at most {usable} loops in total (processes × loops_per_process)"]
            if usable >= self.processes:
                fits.append(
                    f"processes={self.processes} with loops_per_process≤{usable // self.processes}"
                )
            fits.append(
                f"max_connections≥{_min_max_connections(loops, reserve)} with reserve={reserve:g}"
            )
            raise ValueError(
                f"{self!r} cannot give each of its {loops} event loops ({self.processes} processes "
                f"× {self.loops_per_process} loops) even one connection: only {usable} of "
                f"{self.max_connections} are usable after the {reserve:.0%} reserve. What would "
                "fit: " + "; or ".join(fits) + "."
            )

    @property
    def usable(self) -> int:
        """Connections the whole application may hold: ``floor(max_connections × (1 − reserve))``."""
        return _usable(self.max_connections, self.reserve)

    @property
    def per_loop(self) -> int:
        """Connections one event loop's pool may hold (``pool_size + max_overflow``)."""
        return self.usable // (self.processes * self.loops_per_process)

    @property
    def pool_size(self) -> int:
        """Connections each loop keeps open: the larger half of its share."""
        return self.per_loop - self.max_overflow

    @property
    def max_overflow(self) -> int:
        """Extra connections each loop may open under load: the smaller half of its share."""
        return self.per_loop // 2

    @property
    def per_process(self) -> int:
        """Connections one process may hold across all its loops; enforced as a hard cap."""
        return self.per_loop * self.loops_per_process

    @property
    def total(self) -> int:
        """Connections all processes together may hold (≤ `usable`)."""
        return self.per_process * self.processes

    @classmethod
    def from_env(cls) -> PoolBudget:
        """Build a budget from ``DATABASE_MAX_CONNECTIONS``, ``LOOPSAFE_PROCESSES`` (both
        required), ``LOOPSAFE_LOOPS_PER_PROCESS`` (default 1) and ``LOOPSAFE_DB_RESERVE``
        (default 0.1).

        Raises `ValueError` naming the variable that is missing or not a number. Since 0.1.0.
        """
        max_connections = _env_int("DATABASE_MAX_CONNECTIONS", None)
        processes = _env_int("LOOPSAFE_PROCESSES", None)
        loops = _env_int("LOOPSAFE_LOOPS_PER_PROCESS", 1)
        raw_reserve = os.environ.get("LOOPSAFE_DB_RESERVE", "").strip()
        try:
            reserve = float(raw_reserve) if raw_reserve else 0.1
        except ValueError:
            raise ValueError(
                f"LOOPSAFE_DB_RESERVE must be a fraction such as 0.1, got {raw_reserve!r}"
            ) from None
        return cls(max_connections, processes, loops, reserve)


def _env_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        if default is None:
            raise ValueError(
                f"PoolBudget.from_env() needs {name}: set it to a whole number "
                "(DATABASE_MAX_CONNECTIONS: what the server or pooler allows this application; "
                "LOOPSAFE_PROCESSES: processes opening pools against it, across all hosts)."
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
