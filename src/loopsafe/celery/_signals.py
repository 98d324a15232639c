"""install(app): wire loopsafe into a Celery worker's process, thread and shutdown lifecycle."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .. import _fork
from .._errors import WorkerBudgetError
from .._log import get_logger
from .._validate import seconds
from . import _limits, _loop_thread, _run_async
from ._pool import PoolKind, check_pool, process_loop_pool

if TYPE_CHECKING:
    import celery

__all__ = ("WorkerBudgetError", "install", "worker_budget_shape")

_log = get_logger("loopsafe.celery")

LoopMode = Literal["thread", "process"]
#: Pools that enforce Celery's time limits themselves (through billiard's timers and signals).
_ENFORCES_TIME_LIMITS = frozenset({"prefork"})
#: How long a warm shutdown waits for coroutines on the shared loop before cancelling them.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: A shared loop held longer than this by one task is logged (``loopsafe.celery_loop_blocked``).
DEFAULT_BLOCKED_AFTER = 0.5


class _WorkerSettings:
    """What install() was told, and what it learned about the worker running in this process."""

    __slots__ = (
        "blocked_after",
        "concurrency",
        "default_timeout",
        "drain_timeout",
        "kind",
        "loop",
        "process_loop",
    )

    def __init__(self) -> None:
        self.kind: PoolKind | None = None
        self.concurrency: int | None = None
        self.default_timeout: float | None = None
        self.loop: LoopMode | None = None  # None: "process" for the threads pool, else "thread"
        self.blocked_after = DEFAULT_BLOCKED_AFTER
        self.drain_timeout = DEFAULT_DRAIN_TIMEOUT
        # True once this worker runs its tasks' coroutines on one shared loop.
        self.process_loop = False


_settings = _WorkerSettings()
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_install_lock = threading.Lock()


def install(
    app: celery.Celery,
    *,
    loop: LoopMode | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    default_timeout: float | None = None,
    blocked_after: float = DEFAULT_BLOCKED_AFTER,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> None:
    """Wire loopsafe into `app`'s workers: fork-safe loops, clean shutdown, checked pool.

    `loop` chooses where a worker's coroutines run:

    - ``"process"``: with ``--pool threads -c N``, the N threads hand their coroutines to one loop
      of the process, where up to N run concurrently — one engine pool and one Redis client per
      process. Sync tasks keep running on their threads. A task holding the loop longer than
      `blocked_after` seconds is logged as ``loopsafe.celery_loop_blocked`` with its name and id.
      ``revoke(terminate=True)`` cancels that task's coroutine only (its ``finally`` blocks run).
      A warm shutdown lets running coroutines finish for up to `drain_timeout` seconds, a cold
      one cancels them at once; either way a cancelled ``acks_late`` task goes back to the queue.
      Prefork and solo run one task per process at a time, so there it is the same as
      ``"thread"``; pools loopsafe does not know are refused.
    - ``"thread"``: each pool thread (or prefork child) runs its tasks on its own persistent loop,
      so a coroutine that blocks holds up only its own thread.
    - None (the default): ``"process"`` for the threads pool, where it measured faster with far
      fewer connections (see the README's worker-mode guide), ``"thread"`` for every other pool.

    `loop_factory` (``uvloop.new_event_loop``, for instance) makes every loop of the worker; no
    event-loop policy API is called.

    - ``worker_process_init`` (prefork children and the solo pool): anything inherited from the
      parent process is forgotten without I/O and the process gets fresh loops on first use.
    - ``worker_process_shutdown`` (each prefork child on exit; billiard ends children with
      ``os._exit``, so ``atexit`` never runs there) and ``worker_shutdown`` (the main process,
      after the pool stopped): every `run_async` loop is closed cleanly, each on its own loop —
      leftover tasks cancelled, loop-local resources closed (``loopsafe.aclose_all()``), async
      generators and the default executor shut down.
    - At worker start-up, gevent and eventlet pools (and, with ``loop="process"``, pools
      loopsafe does not know) raise `UnsupportedPoolError`; a pool and concurrency that need
      more connections than the default database's `PoolBudget` allows raise `WorkerBudgetError`.
    - Pools that do not enforce time limits (threads, solo) get them from `run_async`: while a
      task runs, calls without their own ``timeout`` share the task's ``soft_time_limit`` (raising
      ``SoftTimeLimitExceeded``) or ``time_limit`` (``TimeLimitExceeded``), else
      `default_timeout` seconds (``TimeoutError``). The coroutine is cancelled, its cleanup runs.

    Calling it again for the same app does nothing. Celery's tracer is not patched: bound tasks,
    ``self.retry``, ``autoretry_for``, request context and result backends work as usual.

    Raises:
        ValueError: `loop` is neither "thread" nor "process", or a number of seconds is not
        finite and positive.
        TypeError: `loop_factory` is not callable, or a number of seconds is not a number.

    .. versionadded:: 0.1.0
    """
    from celery import bootsteps
    from celery.exceptions import SoftTimeLimitExceeded

    if loop not in (None, "thread", "process"):
        raise ValueError(f"install() loop must be 'thread' or 'process', got {loop!r}")
    if loop_factory is not None and not callable(loop_factory):
        raise TypeError(
            f"install() loop_factory must make an event loop when called (for example "
            f"uvloop.new_event_loop), got {loop_factory!r}"
        )
    if default_timeout is not None:
        default_timeout = seconds("install() default_timeout", default_timeout)
    blocked_after = seconds("install() blocked_after", blocked_after)
    drain_timeout = seconds("install() drain_timeout", drain_timeout)
    with _install_lock:
        if app in _installed:
            return
        _settings.default_timeout = default_timeout
        _settings.loop = loop
        _settings.blocked_after = blocked_after
        _settings.drain_timeout = drain_timeout
        if loop_factory is not None:
            _run_async.set_loop_factory(loop_factory)
        _installed.add(app)
        _connect_signals()
        _limits.register_interrupt(SoftTimeLimitExceeded)

    class LoopsafeStep(bootsteps.Step):  # type: ignore[misc]
        """Checks the pool and records its kind before the worker creates it."""

        name = "loopsafe.celery.install"

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            _configure_worker(parent)
            super().__init__(parent, **kwargs)

    app.steps["worker"].add(LoopsafeStep)


def _configure_worker(worker: Any) -> None:
    kind = check_pool(worker.pool_cls, _settings.loop or "thread")
    loop = _settings.loop or ("process" if kind == "threads" else "thread")
    _settings.kind = kind
    concurrency = getattr(worker, "concurrency", None)
    if kind == "solo":
        concurrency = 1
    _settings.concurrency = concurrency if isinstance(concurrency, int) else None
    _settings.process_loop = loop == "process" and kind == "threads"
    if _settings.concurrency is not None:
        _check_budget(kind, _settings.concurrency, loop)
    if _settings.process_loop:
        # Loops opened at import time (the app touching the database in the main thread) would
        # each keep a pool of their own: close them; from now on there is one loop.
        _run_async.close_all_loops()
        _run_async.use_process_loop(True, blocked_after=_settings.blocked_after)
        worker.pool_cls = process_loop_pool(_settings.drain_timeout)
    _log.info(
        "loopsafe.celery_worker_configured",
        pool=kind,
        concurrency=_settings.concurrency,
        loop="process" if _settings.process_loop else "thread",
        run_async_time_limits=kind not in _ENFORCES_TIME_LIMITS,
    )


def worker_budget_shape(kind: str, concurrency: int, loop: str = "thread") -> tuple[int, int]:
    """(processes, loops_per_process) that a worker's pools open against the database.

    Prefork: one process per child, one loop each. Threads: one process, one loop per thread —
    or one loop in all with ``loop="process"``. Solo: one and one. The main process counts too if
    it uses the database itself (at import time, for instance): add one process for it in the
    budget.
    """
    if kind == "prefork":
        return concurrency, 1
    if kind == "threads" and loop == "thread":
        return 1, concurrency
    return 1, 1


def _check_budget(kind: str, concurrency: int, loop: str) -> None:
    """Raise `WorkerBudgetError` when the default database's PoolBudget cannot hold this worker."""
    database_module = sys.modules.get("loopsafe.db")
    if database_module is None:  # the app does not use loopsafe.db: nothing to check
        return
    try:
        budget = database_module.get_database().budget
    except database_module.DatabaseNotConfiguredError:
        return
    if budget is None or isinstance(budget, database_module.ElasticBudget):
        return  # an elastic role's leases hold for any number of processes and loops
    processes, loops = worker_budget_shape(kind, concurrency, loop)
    if budget.processes >= processes and budget.loops_per_process >= loops:
        return
    # Too few processes: every child gets a per-process share sized for fewer, so together they
    # can exceed the server's limit. Too few loops: the loops together exceed the process's share.
    fix = (
        " or install(app, loop='process') to serve every thread from one loop"
        if kind == "threads" and loop == "thread"
        else ""
    )
    raise WorkerBudgetError(
        f"this worker (pool {kind}, concurrency {concurrency}) opens pools in {processes} "
        f"process(es) with {loops} loop(s) each, but the database budget {budget!r} was sized "
        f"for processes={budget.processes}, loops_per_process={budget.loops_per_process}: "
        "together they could exceed the server's connection limit. Size the budget for this "
        "worker (LOOPSAFE_PROCESSES / LOOPSAFE_LOOPS_PER_PROCESS with PoolBudget.from_env(); "
        f"count the main process too if it uses the database), lower the concurrency{fix}."
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
    signals.task_revoked.connect(_on_task_revoked, weak=False, dispatch_uid="loopsafe.task_revoked")


def _on_worker_process_init(**_: Any) -> None:
    # In a forked child the at-fork hooks have already forgotten the parent's resources and
    # loops; this catches forks that bypassed them. Not reset_after_fork() unconditionally: in the
    # solo pool (no fork) that would drop this process's own live connections, and in a child it
    # would drop what other worker_process_init receivers just opened.
    reset = _fork.check_pid()
    _log.info("loopsafe.celery_process_init", pid=os.getpid(), reset=reset)


def _on_process_shutdown(**_: Any) -> None:
    closed = _run_async.close_all_loops()
    _log.info("loopsafe.celery_process_shutdown", pid=os.getpid(), loops_closed=closed)


def _on_worker_shutdown(**_: Any) -> None:
    closed = _run_async.close_all_loops()
    _log.info("loopsafe.celery_worker_shutdown", pid=os.getpid(), loops_closed=closed)


def _task_label(task: Any, task_id: object) -> str:
    return f"{task.name}[{task_id}]"


def _on_task_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, **_: Any
) -> None:
    shared = _loop_thread.current_process_loop()
    if not terminated or shared is None or sender is None or request is None:
        return
    from celery.exceptions import Ignore

    # Ignore: the worker already stored REVOKED; the task's own outcome must not overwrite it.
    shared.cancel_where(_task_label(sender, request.id), Ignore("revoked with terminate=True"))


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


def _on_task_prerun(task: Any = None, task_id: object = None, **_: Any) -> None:
    kind = _settings.kind
    if kind is None or kind in _ENFORCES_TIME_LIMITS or task is None:
        return
    label = _task_label(task, task_id)
    hard, soft = _time_limits(task)
    if soft is not None and (hard is None or soft <= hard):
        _limits.set_thread_deadline(soft, _soft_time_limit_error, task=label)
    elif hard is not None:
        _limits.set_thread_deadline(hard, _hard_time_limit_error, task=label)
    else:
        _limits.set_thread_deadline(_settings.default_timeout, task=label)


def _on_task_postrun(**_: Any) -> None:
    if _settings.kind is not None and _settings.kind not in _ENFORCES_TIME_LIMITS:
        _limits.set_thread_deadline(None)


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
