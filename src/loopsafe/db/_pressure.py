"""Pool pressure: checkout waits, usage and long-held connections, counted and logged per process."""

from __future__ import annotations

import bisect
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

from .._fork import on_fork_in_child
from .._log import get_logger

__all__ = ("WAIT_BUCKETS", "PoolPressure", "PressureAlerts")

_log = get_logger("loopsafe.db")
_pressures: weakref.WeakSet[PoolPressure] = weakref.WeakSet()

#: Upper bounds (seconds) of the checkout-wait histogram; the last bucket is +Inf.
WAIT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Frames from these packages are plumbing, not the code path that held a connection.
_PLUMBING = (
    f"{os.sep}sqlalchemy{os.sep}",
    f"{os.sep}loopsafe{os.sep}db{os.sep}",
    f"{os.sep}asyncio{os.sep}",
    f"{os.sep}greenlet{os.sep}",
    f"{os.sep}contextlib.py",
)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds or a ratio, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class PressureAlerts:
    """When pool pressure is logged, from the environment (read once per `Database`).

    ``LOOPSAFE_DB_USAGE_ALERT`` (0.9): usage ratio that counts as high; ``LOOPSAFE_DB_USAGE_ALERT_AFTER``
    (5 s): how long usage must stay high before ``loopsafe.db.pool_pressure`` is logged;
    ``LOOPSAFE_DB_HELD_ALERT`` (10 s): a connection checked out longer logs
    ``loopsafe.db.connection_held``; ``LOOPSAFE_DB_ALERT_INTERVAL`` (60 s): at most one event
    of each kind per database per interval.
    """

    usage: float = 0.9
    usage_after: float = 5.0
    held: float = 10.0
    interval: float = 60.0

    @classmethod
    def from_env(cls) -> PressureAlerts:
        return cls(
            usage=_env_float("LOOPSAFE_DB_USAGE_ALERT", cls.usage),
            usage_after=_env_float("LOOPSAFE_DB_USAGE_ALERT_AFTER", cls.usage_after),
            held=_env_float("LOOPSAFE_DB_HELD_ALERT", cls.held),
            interval=_env_float("LOOPSAFE_DB_ALERT_INTERVAL", cls.interval),
        )


class PoolPressure:
    """What one `Database`'s pools report about waits and holds, across this process's loops.

    Only the slow path (a checkout that has to wait) takes the lock; a checkout served at once
    costs a counter increment, a clock read and a comparison, so the session hot path stays as
    fast as before.
    """

    def __init__(self, database: str, alerts: PressureAlerts) -> None:
        self.database = database
        self.alerts = alerts
        self._reset()
        _pressures.add(self)

    def _reset(self) -> None:
        # Also what a forked child runs: the parent's waits are not the child's, and a lock held
        # by another thread at fork time would never be released.
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._waits: dict[int, float] = {}
        # Checkouts served without waiting: the histogram's first bucket, counted lock-free
        # (a rare lost increment under thread contention only blurs a metric).
        self.immediate = 0
        self._bucket_counts = [0] * (len(WAIT_BUCKETS) + 1)
        self._wait_sum = 0.0
        self._high_since: float | None = None
        self._last_usage_alert = -float("inf")
        self._last_held_alert = -float("inf")

    # -- waits -----------------------------------------------------------------------------

    def wait_started(self) -> int:
        """Record that a checkout starts waiting; pass the token to `wait_ended`."""
        with self._lock:
            token = next(self._tokens)
            self._waits[token] = time.monotonic()
        return token

    def wait_ended(self, token: int) -> None:
        with self._lock:
            started = self._waits.pop(token, None)
            if started is None:
                return
            waited = time.monotonic() - started
            self._wait_sum += waited
            self._bucket_counts[bisect.bisect_left(WAIT_BUCKETS, waited)] += 1

    def waiting(self) -> tuple[int, float]:
        """Checkouts waiting right now, and how long the oldest has waited (seconds)."""
        with self._lock:
            starts = list(self._waits.values())
        if not starts:
            return 0, 0.0
        return len(starts), time.monotonic() - min(starts)

    def histogram(self) -> tuple[list[int], float, int]:
        """Cumulative counts per `WAIT_BUCKETS` bound (+Inf last), the sum of waits, the count."""
        with self._lock:
            counts = list(self._bucket_counts)
            total = self._wait_sum
        counts[0] += self.immediate
        cumulative = list(itertools.accumulate(counts))
        return cumulative, total, cumulative[-1]

    # -- alerts ----------------------------------------------------------------------------

    def observe_usage(self, used: int, capacity: int) -> None:
        """Log ``loopsafe.db.pool_pressure`` when usage has stayed high for a while.

        `used` and `capacity` are one loop's pool. A pool of one connection (per-thread loops
        under a budget) is busy by design whenever its loop works: it alerts only when a
        checkout waits, never for usage alone.
        """
        if capacity <= 0:
            return
        now = time.monotonic()
        if used < self.alerts.usage * capacity:
            self._high_since = None
            return
        if self._high_since is None:
            self._high_since = now
            return
        high_for = now - self._high_since
        if (
            high_for < self.alerts.usage_after
            or now - self._last_usage_alert < self.alerts.interval
        ):
            return
        waiting, longest = self.waiting()
        if capacity <= 1 and waiting == 0:
            return
        self._last_usage_alert = now
        _log.warning(
            "loopsafe.db.pool_pressure",
            database=self.database,
            used=used,
            capacity=capacity,
            usage=round(used / capacity, 3),
            high_for_s=round(high_for, 1),
            waiting=waiting,
            longest_wait_s=round(longest, 3),
            pid=os.getpid(),
        )

    def observe_hold(self, held: float) -> None:
        """Log ``loopsafe.db.connection_held`` for a connection returned after a long hold."""
        if held < self.alerts.held:
            return
        now = time.monotonic()
        if now - self._last_held_alert < self.alerts.interval:
            return
        self._last_held_alert = now
        _log.warning(
            "loopsafe.db.connection_held",
            database=self.database,
            held_s=round(held, 2),
            threshold_s=self.alerts.held,
            code=caller(),
            pid=os.getpid(),
            hint="a session kept open across slow work (an LLM or HTTP call) holds a server "
            "connection all that time; open it after the slow work, or only around the writes",
        )


def _frames() -> Iterator[FrameType]:
    """This thread's stack, then (inside SQLAlchemy's greenlet) the awaiting coroutine's."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back
    greenlet = sys.modules.get("greenlet")
    parent = getattr(greenlet.getcurrent(), "parent", None) if greenlet is not None else None
    frame = getattr(parent, "gr_frame", None)
    while frame is not None:
        yield frame
        frame = frame.f_back


def caller(skip: Sequence[str] = _PLUMBING) -> str | None:
    """``file:line in function`` of the first frame outside SQLAlchemy, loopsafe.db and asyncio."""
    for frame in _frames():
        filename = frame.f_code.co_filename
        # "<sqlalchemy generated …>", "<string>": code without a file of its own.
        if not filename.startswith("<") and not any(part in filename for part in skip):
            return f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
    return None


def _reset_all() -> None:
    for pressure in list(_pressures):
        pressure._reset()


on_fork_in_child(_reset_all)
