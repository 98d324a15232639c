"""Prometheus collector for this process's loopsafe pools (``pip install 'loopsafe[metrics]'``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import cast

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
except ImportError as _error:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "loopsafe.db.metrics needs prometheus-client: pip install 'loopsafe[metrics]'"
    ) from _error

from ._database import live_databases
from ._pressure import WAIT_BUCKETS

__all__ = ("PoolCollector", "register")

_GAUGES = {
    "checked_out": "Connections checked out of the pools now",
    "checked_in": "Idle connections kept open in the pools",
    "capacity": "Most connections this process may hold (its budget share)",
    "usage": "checked_out / capacity",
    "waiting": "Checkouts waiting for a connection now",
    "longest_wait": "Seconds the oldest waiting checkout has waited",
}


class PoolCollector:
    """Per-process gauges of every live `Database`'s ``pool_status()`` and a histogram of
    checkout waits, labelled ``database`` and ``pid`` (each process serves its own figures).

    .. versionadded:: 0.1.0
    """

    def collect(self) -> Iterator[Metric]:
        pid = str(os.getpid())
        databases = sorted(live_databases(), key=lambda database: database.name)
        gauges = {
            key: GaugeMetricFamily(f"loopsafe_db_pool_{key}", help_, labels=["database", "pid"])
            for key, help_ in _GAUGES.items()
        }
        waits = HistogramMetricFamily(
            "loopsafe_db_checkout_wait_seconds",
            "Time a checkout waited for a connection (0 when one was free)",
            labels=["database", "pid"],
        )
        for database in databases:
            figures = cast(Mapping[str, float], database.pool_status())
            for key, gauge in gauges.items():
                gauge.add_metric([database.name, pid], float(figures[key]))
            cumulative, total, _ = database._pressure.histogram()
            bounds = [*(f"{bound:g}" for bound in WAIT_BUCKETS), "+Inf"]
            waits.add_metric(
                [database.name, pid],
                list(zip(bounds, [float(count) for count in cumulative], strict=True)),
                total,
            )
        yield from gauges.values()
        yield waits


def register(registry: CollectorRegistry = REGISTRY) -> PoolCollector:
    """Register a `PoolCollector` with `registry` (default: prometheus-client's global one).

    Call once per process, e.g. at app start-up; serve the registry as usual
    (``prometheus_client.make_asgi_app()``).

    .. versionadded:: 0.1.0
    """
    collector = PoolCollector()
    registry.register(collector)
    return collector
