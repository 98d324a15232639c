"""install(app): wire loopsafe into a Celery worker's process, thread and shutdown lifecycle."""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .. import _fork
from .._errors import LoopsafeError
from .._log import get_logger
from . import _bridge

if TYPE_CHECKING:
    import celery

__all__ = (
    "UnsupportedPoolError",
    "check_pool",
    "install",
    "pool_kind",
    "worker_budget_shape",
)

_log = get_logger("loopsafe.celery")

PoolKind = Literal["prefork", "threads", "solo", "gevent", "eventlet", "custom"]

_POOL_MODULES: dict[str, PoolKind] = {
    "celery.concurrency.prefork": "prefork",
    "celery.concurrency.asynpool": "prefork",
    "celery.concurrency.thread": "threads",
    "celery.concurrency.solo": "solo",
    "celery.concurrency.gevent": "gevent",
    "celery.concurrency.eventlet": "eventlet",
}
_POOL_ALIASES: dict[str, PoolKind] = {
    "prefork": "prefork",
    "processes": "prefork",
    "threads": "threads",
    "solo": "solo",
    "gevent": "gevent",
    "eventlet": "eventlet",
}
#: Pools that enforce Celery's time limits themselves (through billiard's timers and signals).
_ENFORCES_TIME_LIMITS = frozenset({"prefork"})


class UnsupportedPoolError(LoopsafeError, RuntimeError):
    """The Celery worker uses a pool that loopsafe.celery cannot serve (gevent, eventlet).

    Raised when the worker starts, so a misconfigured worker never takes a task.

    .. versionadded:: 0.1.0
    """


def pool_kind(pool: object) -> PoolKind:
    """Classify a worker's pool, given as an alias (``"threads"``), a class, or a pool instance."""
    if isinstance(pool, str):
        alias = _POOL_ALIASES.get(pool.lower())
        if alias is not None:
            return alias
        module = pool.partition(":")[0]
    else:
        cls = pool if isinstance(pool, type) else type(pool)
        module = cls.__module__
    return _POOL_MODULES.get(module, "custom")


def check_pool(pool: object) -> PoolKind:
    """Return the pool's kind, or raise `UnsupportedPoolError` for a greenlet pool."""
    kind = pool_kind(pool)
    environment = _greenlet_environment()
    if kind in ("gevent", "eventlet") or environment is not None:
        name = kind if kind in ("gevent", "eventlet") else environment
        raise UnsupportedPoolError(
            f"loopsafe.celery does not support the {name} pool: its greenlets all share one OS "
            "thread, so a run_async() call would block every other task while its event loop "
            "runs, and loop-local resources would be shared between concurrent tasks. Start the "
            "worker with --pool prefork, --pool threads or --pool solo."
        )
    return kind


def _greenlet_environment() -> str | None:
    """'gevent' or 'eventlet' when the process was monkey-patched by one of them, else None."""
    from kombu.utils.compat import detect_environment

    environment: str = detect_environment()  # type: ignore[no-untyped-call]
    return environment if environment in ("gevent", "eventlet") else None


class _WorkerSettings:
    """What install() learned about the worker running in this process."""

    __slots__ = ("concurrency", "default_timeout", "kind")

    def __init__(self) -> None:
        self.kind: PoolKind | None = None
        self.concurrency: int | None = None
        self.default_timeout: float | None = None


_settings = _WorkerSettings()
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_install_lock = threading.Lock()


def install(app: celery.Celery, *, default_timeout: float | None = None) -> None:
    """Wire loopsafe into `app`'s workers: fork-safe loops, clean shutdown, checked pool.

    - ``worker_process_init`` (prefork children and the solo pool): anything inherited from the
      parent process is forgotten without I/O and the process gets fresh loops on first use.
    - ``worker_process_shutdown`` (each prefork child on exit; billiard ends children with
      ``os._exit``, so ``atexit`` never runs there) and ``worker_shutdown`` (the main process,
      after the pool stopped): every `run_async` loop is closed cleanly, each on its own loop —
      leftover tasks cancelled, loop-local resources closed (``loopsafe.aclose_all()``), async
      generators and the default executor shut down.
    - At worker start-up, gevent and eventlet pools raise `UnsupportedPoolError`.
    - Pools that do not enforce time limits (threads, solo) get them from `run_async`: while a
      task runs, calls without their own ``timeout`` share the task's ``soft_time_limit`` (raising
      ``SoftTimeLimitExceeded``) or ``time_limit`` (``TimeLimitExceeded``), else
      `default_timeout` seconds (``TimeoutError``).

    Calling it again for the same app does nothing. Celery's tracer is not patched: bound tasks,
    ``self.retry``, ``autoretry_for``, request context and result backends work as usual.

    Raises:
        ValueError: `default_timeout` is not a positive number.

    .. versionadded:: 0.1.0
    """
    from celery import bootsteps
    from celery.exceptions import SoftTimeLimitExceeded

    if default_timeout is not None and not _bridge.positive_seconds(default_timeout):
        raise ValueError(
            f"install() default_timeout must be a positive number of seconds or None, "
            f"got {default_timeout!r}"
        )
    with _install_lock:
        if app in _installed:
            return
        _settings.default_timeout = default_timeout
        _installed.add(app)
        _connect_signals()
        _bridge.register_interrupt(SoftTimeLimitExceeded)

    class LoopsafeStep(bootsteps.Step):  # type: ignore[misc]
        """Checks the pool and records its kind before the worker creates it."""

        name = "loopsafe.celery.install"

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            _configure_worker(parent)
            super().__init__(parent, **kwargs)

    app.steps["worker"].add(LoopsafeStep)


def _configure_worker(worker: Any) -> None:
    kind = check_pool(worker.pool_cls)
    _settings.kind = kind
    concurrency = getattr(worker, "concurrency", None)
    if kind == "solo":
        concurrency = 1
    _settings.concurrency = concurrency if isinstance(concurrency, int) else None
    _log.info(
        "loopsafe.celery_worker_configured",
        pool=kind,
        concurrency=_settings.concurrency,
        run_async_time_limits=kind not in _ENFORCES_TIME_LIMITS,
    )
    if _settings.concurrency is not None:
        _check_budget(kind, _settings.concurrency)


def worker_budget_shape(kind: str, concurrency: int) -> tuple[int, int]:
    """(processes, loops_per_process) that a worker's pools open against the database.

    Prefork: one process per child, one loop each. Threads: one process, one loop per thread.
    Solo: one and one. The main process counts too if it uses the database itself (at import
    time, for instance): add one process for it in the budget.
    """
    if kind == "prefork":
        return concurrency, 1
    if kind == "threads":
        return 1, concurrency
    return 1, 1


def _check_budget(kind: str, concurrency: int) -> None:
    """Warn when the default database's PoolBudget cannot hold this worker's pools."""
    database_module = sys.modules.get("loopsafe.db")
    if database_module is None:  # the app does not use loopsafe.db: nothing to check
        return
    try:
        budget = database_module.get_database().budget
    except database_module.DatabaseNotConfiguredError:
        return
    if budget is None:
        return
    processes, loops = worker_budget_shape(kind, concurrency)
    if budget.processes >= processes and budget.loops_per_process >= loops:
        return
    # Too few processes: every child gets a per-process share sized for fewer, so together they
    # can exceed the server's limit. Too few loops: threads wait for each other's connections.
    _log.warning(
        "loopsafe.celery_budget_mismatch",
        pool=kind,
        concurrency=concurrency,
        budget=repr(budget),
        needs=f"processes>={processes} (+1 if the main process uses the database), "
        f"loops_per_process>={loops}",
        hint="set LOOPSAFE_PROCESSES / LOOPSAFE_LOOPS_PER_PROCESS for this worker and build the "
        "budget with PoolBudget.from_env()",
    )


def _connect_signals() -> None:
    from celery import signals

    # weak=False: these are module functions, but say it anyway. dispatch_uid makes a second
    # install() (or a re-import) connect nothing twice.
    signals.worker_process_init.connect(
        _on_worker_process_init, weak=False, dispatch_uid="loopsafe.process_init"
    )
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="loopsafe.process_shutdown"
    )
    signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid="loopsafe.worker_shutdown"
    )
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="loopsafe.task_prerun")
    signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="loopsafe.task_postrun")


def _on_worker_process_init(**_: Any) -> None:
    # In a forked child the at-fork hooks have already forgotten the parent's resources and
    # loops; this catches forks that bypassed them. Not reset_after_fork() unconditionally: in the
    # solo pool (no fork) that would drop this process's own live connections, and in a child it
    # would drop what other worker_process_init receivers just opened.
    reset = _fork.check_pid()
    _log.info("loopsafe.celery_process_init", pid=os.getpid(), reset=reset)


def _on_process_shutdown(**_: Any) -> None:
    closed = _bridge.close_all_loops()
    _log.info("loopsafe.celery_process_shutdown", pid=os.getpid(), loops_closed=closed)


def _on_worker_shutdown(**_: Any) -> None:
    closed = _bridge.close_all_loops()
    _log.info("loopsafe.celery_worker_shutdown", pid=os.getpid(), loops_closed=closed)


def _time_limit_error(kind: str) -> Callable[[str, float], BaseException]:
    def make(what: str, seconds: float) -> BaseException:
        from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

        message = (
            f"{what} exceeded the task's {kind} of {seconds:g} s (enforced by loopsafe's "
            "run_async: this pool has no time limits of its own); it was cancelled and its "
            "cleanup ran."
        )
        if kind == "soft_time_limit":
            error: BaseException = SoftTimeLimitExceeded(message)
        else:
            error = TimeLimitExceeded(message)
        return error

    return make


_soft_time_limit_error = _time_limit_error("soft_time_limit")
_hard_time_limit_error = _time_limit_error("time_limit")


def _on_task_prerun(task: Any = None, **_: Any) -> None:
    kind = _settings.kind
    if kind is None or kind in _ENFORCES_TIME_LIMITS or task is None:
        return
    hard, soft = _time_limits(task)
    if soft is not None and (hard is None or soft <= hard):
        _bridge.set_thread_deadline(soft, _soft_time_limit_error)
    elif hard is not None:
        _bridge.set_thread_deadline(hard, _hard_time_limit_error)
    elif _settings.default_timeout is not None:
        _bridge.set_thread_deadline(_settings.default_timeout)


def _on_task_postrun(**_: Any) -> None:
    if _settings.kind is not None and _settings.kind not in _ENFORCES_TIME_LIMITS:
        _bridge.set_thread_deadline(None)


def _time_limits(task: Any) -> tuple[float | None, float | None]:
    """(hard, soft) for the running request: per-call limits first, then the task's defaults."""
    hard: float | None = None
    soft: float | None = None
    request_limits = getattr(task.request, "timelimit", None)
    if request_limits:
        hard, soft = request_limits
    hard = hard or getattr(task, "time_limit", None)
    soft = soft or getattr(task, "soft_time_limit", None)
    return (float(hard) if hard else None, float(soft) if soft else None)
