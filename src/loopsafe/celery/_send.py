"""`send`: publish a Celery task from async code without blocking the event loop.

How: each event loop gets a small sender per Celery app (a `LoopLocal`): a pool of kombu
producers over the app's broker connection, and a few threads that own them. `send` hands the
publish to one of those threads and awaits it, so the loop only ever pays a thread hand-off.
The thread runs Celery's own ``apply_async`` with our producer, which makes the message exactly
what ``apply_async`` sends (routing, headers, ``before_task_publish``/``after_task_publish``
signals included): there is no second implementation of Celery's wire format to drift from it.

Why threads and not an asyncio AMQP/Redis client: Celery's message building, routing, retry
policy and signals would have to be re-implemented per transport and kept byte-identical across
Celery versions, and a publish costs the same broker round trips either way. What the hand-off
costs the loop, and the throughput against ``.delay()``, are measured by
``benchmarks/bench_celery_client.py`` (figures in ``benchmarks/results/celery_client.md``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._asyncio_compat import settled_within
from .._errors import BrokerUnavailableError
from .._log import get_logger, redact_dsn
from .._registry import LoopLocal

__all__ = ("DEFAULT_SEND_TIMEOUT", "SENDER_THREADS", "send")

_log = get_logger("loopsafe.celery")

#: Seconds `send` waits for the broker before raising `BrokerUnavailableError`.
DEFAULT_SEND_TIMEOUT = 10.0
#: Publishing threads (and pooled broker connections) per event loop and Celery app, started only
#: as concurrent sends need them. A publish to Redis is two round trips: with a broker 20 ms
#: away, 16 keep up with 400 sends/s (8 did not keep up with 200/s in the benchmark).
SENDER_THREADS = 16

# Inherited senders after a fork: their threads did not survive, and their sockets are the
# parent's (closing an AMQP connection here would send Connection.Close on the parent's socket,
# and py-amqp shuts the socket down on garbage collection). Kept, never used, never closed.
_inherited: list[object] = []


def _skip_result_subscription(app: Any) -> None:
    """In a sender thread: stop ``apply_async`` subscribing to each task's result channel.

    Celery's Redis result backend subscribes, in the sending thread, to the channel of every task
    it sends, for an ``AsyncResult.get()`` in that thread. Nothing waits in a sender thread (the
    caller gets its own ``AsyncResult`` and `result` has its own connection), so that costs each
    send a SUBSCRIBE and an UNSUBSCRIBE, and each sender thread a pub/sub connection whose replies
    nobody reads. The backend of this thread is its own (Celery keeps one per thread unless
    ``result_backend_thread_safe`` shares one), so only publishes from this thread change; the
    message does not. A shared backend is left as it is. Done before each publish rather than once
    per thread: a backend that cannot be created then fails that send, as in ``apply_async``,
    instead of breaking the thread pool (an executor whose initializer raised refuses all work).
    """
    from celery.backends.redis import RedisBackend

    backend = app.backend  # this thread's instance
    if isinstance(backend, RedisBackend) and not backend.thread_safe:
        backend.on_task_call = _no_subscription


def _no_subscription(producer: Any, task_id: str) -> None:
    """``on_task_call`` of a sender thread's Redis result backend: nothing to subscribe to."""


class _Sender:
    """One loop's publishing threads and producer pool for one Celery app."""

    def __init__(self, app: Any) -> None:
        import kombu.pools

        pools: Any = kombu.pools  # untyped: keep mypy from checking calls into it
        self.app = app
        self.executor = ThreadPoolExecutor(
            SENDER_THREADS, thread_name_prefix=f"loopsafe-send-{app.main or 'celery'}"
        )
        self.connections = app.connection_for_write().Pool(limit=SENDER_THREADS)
        self.producers: Any = pools.ProducerPool(
            self.connections, limit=SENDER_THREADS, Producer=app.amqp.Producer
        )
        self.pid = os.getpid()

    def publish(self, signature: Any, options: dict[str, Any]) -> str:
        """In a sender thread: ``apply_async`` through a pooled producer; returns the task id."""
        _skip_result_subscription(self.app)
        with self.producers.acquire(block=True) as producer:
            result = signature.apply_async(producer=producer, **options)
        task_id: str = result.id
        # Release Celery's result object here, in this thread: with a notifying result backend its
        # finaliser unsubscribes from the pub/sub connection this thread's backend opened, which
        # must not happen later from another thread (celery/celery#10477).
        del result
        return task_id

    def close_sync(self) -> None:
        self.producers.force_close_all()
        self.connections.force_close_all()

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.close_sync)
        finally:
            # The threads are idle now (the close ran behind every publish): they exit at once.
            self.executor.shutdown(wait=False)

    def drop(self) -> None:
        """Let go without I/O: a forked child (the parent's sockets), or a loop closed early."""
        self.executor.shutdown(wait=False)  # wakes idle threads to exit; none exist in a child
        if self.pid != os.getpid():
            _inherited.append(self)


async def _aclose_senders(senders: dict[Any, _Sender]) -> None:
    for sender in list(senders.values()):
        await sender.aclose()
    senders.clear()


def _drop_senders(senders: dict[Any, _Sender]) -> None:
    for sender in senders.values():
        sender.drop()
    senders.clear()


_senders: LoopLocal[dict[Any, _Sender]] = LoopLocal(
    dict, aclose=_aclose_senders, drop=_drop_senders, name="loopsafe.celery.senders"
)


def _sender_for(app: Any) -> _Sender:
    senders = _senders.get()
    sender = senders.get(app)
    if sender is None:
        sender = senders[app] = _Sender(app)  # only this loop's thread reaches its dict
        _log.debug(
            "loopsafe.celery_sender_created",
            app=app.main,
            broker=redact_dsn(str(app.conf.broker_url or "")),
        )
    return sender


def _signature_of(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from celery import Task
    from celery.canvas import Signature

    if isinstance(task, Signature):
        # As Signature.delay(*args, **kwargs): partial arguments go first, kwargs merge.
        return task.clone(args, kwargs) if args or kwargs else task
    if isinstance(task, Task):
        return task.signature(args, kwargs)
    raise TypeError(
        f"loopsafe.celery.send() takes a Celery task or signature, got {task!r}. Pass the task "
        "object (send(add, 1, 2)) or a signature carrying apply_async options "
        "(send(add.s(1, 2).set(queue='q', countdown=5)))."
    )


def _caller_options(app: Any, parent: Any) -> dict[str, Any]:
    """What ``send_task`` reads from the calling thread, which the sender thread cannot see.

    ``reply_to`` is the calling thread's id in the app (where the ``rpc://`` backend sends the
    result back); the parent task (a worker task sending a sub-task) gives root and parent ids.
    """
    options: dict[str, Any] = {"reply_to": app.thread_oid}
    if parent is None:
        return options
    options |= {
        "root_id": parent.request.root_id or parent.request.id,
        "parent_id": parent.request.id,
    }
    if app.conf.task_inherit_parent_priority:
        priority = (parent.request.delivery_info or {}).get("priority")
        if priority is not None:
            options["priority"] = priority
    return options


async def send(task: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Queue `task` with `args`/`kwargs` like ``task.delay(...)``, without blocking the event loop.

    `task` is a Celery task, or a signature (``add.s(2).set(queue="q", countdown=5)``) to pass
    ``apply_async`` options; `args`/`kwargs` then merge with the signature's as
    ``Signature.delay`` merges them (partial arguments first). The message is the one ``apply_async`` would publish (it is built
    and sent by ``apply_async``, in a publishing thread of this loop, with a producer pooled for
    this loop). Returns the task's ``AsyncResult``; await it with `loopsafe.celery.result`.

    The option ``send_timeout`` (seconds, default 10) bounds the whole publish, broker
    connection and Celery's publish retries included.

    Raises `BrokerUnavailableError` when the broker cannot be reached (or does not answer)
    within ``send_timeout``, `TypeError` for something that is not a task or signature, and
    whatever ``apply_async`` raises for bad options (``kombu.exceptions.EncodeError``, …).

    .. versionadded:: 0.1.0
    """
    from kombu.exceptions import OperationalError

    signature = _signature_of(task, args, kwargs)
    app = signature.app
    options: dict[str, Any] = dict(signature.options)
    timeout = options.pop("send_timeout", DEFAULT_SEND_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"send_timeout must be a positive number of seconds, got {timeout!r}")
    if "send_timeout" in signature.options:  # ours, not a message property
        signature = signature.clone()
        signature.options.pop("send_timeout")
    parent = app.current_worker_task
    extra = {
        key: value for key, value in _caller_options(app, parent).items() if key not in options
    }
    sender = _sender_for(app)
    loop = asyncio.get_running_loop()
    publish: Callable[[], str] = lambda: sender.publish(signature, extra)  # noqa: E731
    future = loop.run_in_executor(sender.executor, publish)
    if not await settled_within(future, timeout):
        future.cancel()  # a publish still queued never starts; one under way may still land
        _log.warning("loopsafe.celery_send_timeout", task=signature.task, timeout=timeout)
        raise BrokerUnavailableError(
            f"Celery task {signature.task!r} was not handed to the broker "
            f"{redact_dsn(str(app.conf.broker_url or ''))!r} within {timeout:g} s: the broker "
            "is down or not answering, or this loop queued more sends than its "
            f"{SENDER_THREADS} publishing threads could hand over in time. Check the broker is "
            "running and reachable, or raise send_timeout (send(task.s(...).set(send_timeout=30)))."
        )
    try:
        task_id = future.result()
    except (OSError, OperationalError) as exc:
        raise BrokerUnavailableError(
            f"Celery task {signature.task!r} could not be sent: the broker "
            f"{redact_dsn(str(app.conf.broker_url or ''))!r} is unreachable ({exc}). Check it is "
            "running and reachable."
        ) from exc
    async_result = app.AsyncResult(task_id)
    if parent is not None and options.get("add_to_parent", True):
        parent.add_trail(async_result)
    return async_result
