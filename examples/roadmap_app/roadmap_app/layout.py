"""The production layout: API and worker processes, their knobs, and the plan of DB connections."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Literal

from loopsafe.db import BudgetPlan, Role
from roadmap_app.config import Settings, SettingsError, _number
from roadmap_app.jobs import QUEUES
from roadmap_app.processes import ManagedProcess

__all__ = ("QUEUE_NAMES", "Layout", "QueueWorkers", "WorkerPool", "serve")

WorkerPool = Literal["prefork", "threads"]

QUEUE_NAMES = ("workflow", "content", "logs")
# Seconds between a task's soft time limit (it is cancelled and cleans up) and the hard one.
HARD_LIMIT_GRACE_S = 30.0
# How long a stopping process may take (a Celery warm shutdown finishes running tasks) before
# it is killed.
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class QueueWorkers:
    """One Celery worker (its prefork children, or its threads) serving one queue."""

    queue: str
    concurrency: int
    time_limit_s: float


@dataclass(frozen=True)
class Layout:
    """How many processes of each role run, read from the environment and validated.

    ``WEB_CONCURRENCY`` uvicorn workers; per queue ``CELERY_<QUEUE>_CONCURRENCY`` prefork children
    and ``CELERY_<QUEUE>_TIME_LIMIT_S`` (soft; the hard limit is 30 s later);
    ``CELERY_MAX_TASKS_PER_CHILD`` (0: children are never recycled); ``CELERY_POOL``: ``prefork``
    (a process per task in flight) or ``threads`` (one process per queue whose threads run its
    tasks; with ``CELERY_WORKER_LOOP=process`` all their coroutines share one event loop, the
    shared-loop worker mode); ``DATABASE_WEB_WEIGHT`` and ``DATABASE_WEB_MINIMUM``: the API's
    priority in the connection plan; ``HOST``/``PORT``.
    """

    web_workers: int = 2
    workers: tuple[QueueWorkers, ...] = (
        QueueWorkers("workflow", 2, 15 * 60),
        QueueWorkers("content", 2, 15 * 60),
        QueueWorkers("logs", 1, 60),
    )
    max_tasks_per_child: int = 0
    pool: WorkerPool = "prefork"
    web_weight: float = 4.0
    web_minimum: int = 0
    host: str = "127.0.0.1"
    port: int = 8000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Layout:
        """Raises `SettingsError` naming the variable whose value is unusable."""
        env = os.environ if env is None else env
        defaults = {w.queue: w for w in cls.workers}
        pool = env.get("CELERY_POOL", "").strip() or cls.pool
        if pool not in ("prefork", "threads"):
            raise SettingsError(f"CELERY_POOL must be 'prefork' or 'threads', got {pool!r}")
        workers = tuple(
            QueueWorkers(
                queue,
                int(
                    _number(env, f"CELERY_{queue.upper()}_CONCURRENCY",
                            defaults[queue].concurrency, int, low=1, high=512)
                ),
                _number(env, f"CELERY_{queue.upper()}_TIME_LIMIT_S",
                        defaults[queue].time_limit_s, float, low=1.0, high=86_400.0),
            )
            for queue in QUEUE_NAMES
        )  # fmt: skip
        return cls(
            web_workers=int(_number(env, "WEB_CONCURRENCY", cls.web_workers, int, low=1, high=64)),
            workers=workers,
            max_tasks_per_child=int(
                _number(
                    env,
                    "CELERY_MAX_TASKS_PER_CHILD",
                    cls.max_tasks_per_child,
                    int,
                    low=0,
                    high=1_000_000,
                )
            ),
            pool="threads" if pool == "threads" else "prefork",
            web_weight=_number(
                env, "DATABASE_WEB_WEIGHT", cls.web_weight, float, low=0.01, high=1000
            ),
            web_minimum=int(
                _number(env, "DATABASE_WEB_MINIMUM", cls.web_minimum, int, low=0, high=10_000)
            ),
            host=env.get("HOST", "").strip() or cls.host,
            port=int(_number(env, "PORT", cls.port, int, low=1, high=65_535)),
        )

    def plan(self, settings: Settings) -> BudgetPlan:
        """The deployment's connection plan: every process of every role, the API weighted up.

        A queue's role counts the event loops that open pools: with prefork, one per child; with
        the threads pool, one process whose loops are its threads (``CELERY_WORKER_LOOP=thread``)
        or just one (``process``: the shared loop). Either way the queue weighs its concurrency,
        so the threads pool does not shift the API's priority.

        Raises `SettingsError` when the layout cannot fit `DATABASE_MAX_CONNECTIONS`.
        """
        roles = {"web": Role(self.web_workers, weight=self.web_weight, minimum=self.web_minimum)}
        for w in self.workers:
            if self.pool == "prefork":
                roles[w.queue] = Role(w.concurrency)
            else:
                loops = 1 if settings.celery_worker_loop == "process" else w.concurrency
                roles[w.queue] = Role(1, loops=loops, weight=w.concurrency)
        try:
            return BudgetPlan(settings.database_max_connections, roles)
        except ValueError as error:
            raise SettingsError(f"DATABASE_MAX_CONNECTIONS: {error}") from None

    def commands(self) -> list[tuple[str, list[str]]]:
        """(role, argv) of every process to start, the API first; the worker of the sweeper's
        queue also runs Celery beat (the sweeper's schedule)."""
        module = [sys.executable, "-m", "roadmap_app"]
        commands = [
            ("web", [*module, "api", "--host", self.host, "--port", str(self.port),
                     "--workers", str(self.web_workers)]),
        ]  # fmt: skip
        for w in self.workers:
            argv = [*module, "worker", "--queues", w.queue, "--pool", self.pool,
                    "--concurrency", str(w.concurrency),
                    "--name", f"{w.queue}@%h", "--soft-time-limit", f"{w.time_limit_s:g}",
                    "--time-limit", f"{w.time_limit_s + HARD_LIMIT_GRACE_S:g}",
                    "--max-tasks-per-child", str(self.max_tasks_per_child)]  # fmt: skip
            if w.queue == QUEUES["sweep_abandoned"]:
                # The schedule: without it nothing resumes the job of a worker that died.
                argv.append("--beat")
            commands.append((w.queue, argv))
        return commands


def process_env(settings: Settings, layout: Layout, base: Mapping[str, str]) -> dict[str, str]:
    """The environment every process starts with: the plan, unless the pools are fixed or a
    plan is already given, is derived from the layout once, here, so all processes agree."""
    env = dict(base)
    if settings.database_pool_size is None and settings.budget_plan is None:
        env["LOOPSAFE_BUDGET_PLAN"] = json.dumps(layout.plan(settings).to_mapping())
    return env


def serve(settings: Settings, layout: Layout) -> int:
    """Migrate, start the API and one worker per queue, and supervise them until SIGTERM/SIGINT
    or until one of them exits (then stop the rest and return 1), as a container entrypoint."""
    from roadmap_app.__main__ import migrate_database

    if settings.budget_plan is not None:
        missing = {"web", *QUEUE_NAMES} - set(settings.budget_plan.roles)
        if missing:
            raise SettingsError(
                f"LOOPSAFE_BUDGET_PLAN has no role for {', '.join(sorted(missing))}; "
                "plan a share for every process of the layout (web, workflow, content, logs)"
            )
    env = process_env(settings, layout, os.environ)
    migrate_database(settings.database_url, pooler=settings.database_pooler)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes = [
        ManagedProcess(role, argv, env={**env, "LOOPSAFE_ROLE": role}, log_path=None)
        for role, argv in layout.commands()
    ]
    try:
        for process in processes:
            process.start()
        print(f"serving on http://{layout.host}:{layout.port}", flush=True)
        while not stopping and all(process.alive for process in processes):
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        for process in processes:
            process.terminate()  # all at once: warm shutdowns run in parallel
        for process in processes:
            process.stop(timeout=STOP_TIMEOUT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
