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

from ._database import Database, live_databases
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
        yield from _ledger_metrics(databases, pid)


_LEDGER_GAUGES = {
    "in_use": "Connections leased by the role's processes, deployment-wide (as last seen)",
    "waiting": "Checkouts of the role waiting in the ledger's line, deployment-wide",
    "headroom": "Connections the role leaves free for the roles above it",
    "members": "Live processes of the role in the ledger",
}


def _ledger_metrics(databases: list[Database], pid: str) -> Iterator[Metric]:
    """The elastic ledgers these databases lease from: once per plan and role, however many
    databases share them, plus this process's own leases and mode per database."""
    roles = {
        key: GaugeMetricFamily(f"loopsafe_db_ledger_{key}", help_, labels=["plan", "role"])
        for key, help_ in _LEDGER_GAUGES.items()
    }
    limit = GaugeMetricFamily(
        "loopsafe_db_ledger_limit", "Connections the plan's elastic roles share", labels=["plan"]
    )
    held = GaugeMetricFamily(
        "loopsafe_db_ledger_held", "Leases this process holds", labels=["database", "pid"]
    )
    fallback = GaugeMetricFamily(
        "loopsafe_db_ledger_fallback",
        "1 while Redis is unreachable and this process keeps to its fallback share",
        labels=["database", "pid"],
    )
    seen: set[tuple[str, str]] = set()
    plans: set[str] = set()
    for database in databases:
        status = database.pool_status().get("ledger")
        if status is None:
            continue
        held.add_metric([database.name, pid], float(status["held"]))
        fallback.add_metric([database.name, pid], float(status["mode"] == "fallback"))
        plan = status["plan"]
        if plan not in plans:
            plans.add(plan)
            limit.add_metric([plan], float(status["limit"]))
        for role in status["headroom"]:
            if (plan, role) in seen:
                continue
            seen.add((plan, role))
            for key, gauge in roles.items():
                figures = cast(Mapping[str, Mapping[str, int]], status)[key]
                gauge.add_metric([plan, role], float(figures.get(role, 0)))
    if not plans:
        return
    yield from roles.values()
    yield from (limit, held, fallback)


def register(registry: CollectorRegistry = REGISTRY) -> PoolCollector:
    """Register a `PoolCollector` with `registry` (default: prometheus-client's global one).

    Call once per process, e.g. at app start-up; serve the registry as usual
    (``prometheus_client.make_asgi_app()``).

    .. versionadded:: 0.1.0
    """
    collector = PoolCollector()
    registry.register(collector)
    return collector
