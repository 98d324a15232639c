"""The worker's pool: what kind it is, whether loopsafe can serve it, and revoke on a shared loop."""

from __future__ import annotations

from typing import Any, Literal

from .._bridge import _loop_thread
from .._errors import UnsupportedPoolError

__all__ = ("PoolKind", "UnsupportedPoolError", "check_pool", "pool_kind", "process_loop_pool")

PoolKind = Literal["prefork", "threads", "solo", "gevent", "eventlet", "custom"]

_POOL_MODULES: dict[str, PoolKind] = {
    "celery.concurrency.prefork": "prefork",
    "celery.concurrency.asynpool": "prefork",
    "celery.concurrency.thread": "threads",
    "celery.concurrency.solo": "solo",
    "celery.concurrency.gevent": "gevent",
    "celery.concurrency.eventlet": "eventlet",
    __name__: "threads",  # process_loop_pool(), chosen by install() itself
}
_POOL_ALIASES: dict[str, PoolKind] = {
    "prefork": "prefork",
    "processes": "prefork",
    "threads": "threads",
    "solo": "solo",
    "gevent": "gevent",
    "eventlet": "eventlet",
}


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


def check_pool(pool: object, loop: str = "thread") -> PoolKind:
    """Return the pool's kind, or raise `UnsupportedPoolError` for a pool `loop` cannot serve."""
    kind = pool_kind(pool)
    environment = _greenlet_environment()
    if kind in ("gevent", "eventlet") or environment is not None:
        name = kind if kind in ("gevent", "eventlet") else environment
        raise UnsupportedPoolError(
            f"loopsafe.celery does not support the {name} pool: its greenlets all share one OS "
            "thread, so a run_async() call would block every other task while its event loop "
            "runs, and loop-local resources would be shared between concurrent tasks. Start the "
            "worker with --pool threads (many async tasks per process with loop='process'), "
            "--pool prefork or --pool solo."
        )
    if kind == "custom" and loop == "process":
        raise UnsupportedPoolError(
            f"install(app, loop='process') cannot serve the custom pool {pool!r}: the shared loop "
            "needs to know how the pool runs tasks. Start the worker with --pool threads, or "
            "install(app, loop='thread') for this pool."
        )
    return kind


def _greenlet_environment() -> str | None:
    """'gevent' or 'eventlet' when the process was monkey-patched by one of them, else None."""
    from kombu.utils.compat import detect_environment

    environment: str = detect_environment()  # type: ignore[no-untyped-call]
    return environment if environment in ("gevent", "eventlet") else None


def process_loop_pool(drain_timeout: float) -> type[Any]:
    """Celery's threads pool, for coroutines running on the shared process loop.

    What differs: ``revoke(terminate=True)``, which the threads pool refuses, is accepted (the
    coroutine is cancelled by install()'s ``task_revoked`` receiver, which Celery calls right
    after ``terminate_job``); and stopping the pool, which waits for its threads, first cancels
    the coroutines they wait for — at once in a cold shutdown, after `drain_timeout` seconds in a
    warm one. A cancelled task raises ``Reject(requeue=True)``: with ``acks_late`` its message
    goes back to the queue.
    """
    from celery.concurrency.thread import ApplyResult, TaskPool
    from celery.exceptions import Reject
    from celery.worker import state

    def cancel_all() -> None:
        shared = _loop_thread.current_process_loop()
        if shared is not None:
            shared.cancel_where(
                None,
                Reject("the worker shut down while the task ran; it was cancelled", requeue=True),
            )

    class TerminableResult(ApplyResult):  # type: ignore[misc]
        def terminate(self, signal: int | None = None) -> None:
            """Nothing to kill: the task_revoked receiver cancels the coroutine."""

    class ProcessLoopPool(TaskPool):  # type: ignore[misc]
        def on_apply(self, *args: Any, **kwargs: Any) -> TerminableResult:
            return TerminableResult(super().on_apply(*args, **kwargs).f)

        def terminate_job(self, pid: int, signal: int | None = None) -> None:
            """Nothing to kill: the task_revoked receiver cancels the coroutine."""

        def on_stop(self) -> None:
            shared = _loop_thread.current_process_loop()
            if state.should_terminate:  # cold shutdown
                cancel_all()
            elif shared is not None:
                shared.call_later(drain_timeout, cancel_all)
            super().on_stop()

        def on_terminate(self) -> None:
            cancel_all()
            super().on_terminate()

    return ProcessLoopPool
