"""`send`: publish a Celery task from async code without blocking the event loop.

How: each event loop gets a small sender per Celery app (a `LoopLocal`): up to
`SENDER_THREADS` publishing threads, each with its own kombu producer and broker connection.
`send` queues the publish for those threads and awaits it, so the loop only ever pays a thread
hand-off.
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
import collections
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from .._errors import BrokerUnavailableError
from .._log import get_logger, redact_dsn
from .._registry import LoopLocal

__all__ = ("DEFAULT_SEND_TIMEOUT", "SENDER_THREADS", "send")

_log = get_logger("loopsafe.celery")

#: Seconds `send` waits for the broker before raising `BrokerUnavailableError`.
DEFAULT_SEND_TIMEOUT = 10.0
#: Publishing threads (each with its broker connection) at most, per event loop and Celery app. A
#: publish to Redis waits for the broker's reply: with a broker 20 ms away, 16 keep up with 400
#: sends/s (8 did not keep up with 200/s in the benchmark).
SENDER_THREADS = 16
#: A publish slower than this (seconds; its connection already open) waited on the broker: when
#: publishes are queued behind it, another thread starts. A broker nearby answers in a fraction
#: of a millisecond, and a thread waiting for the GIL gets it within 5 ms, so only the broker's
#: distance makes a publish this slow. Threads that never wait would only fight over the GIL:
#: 16 of them sent 0.66x of .delay()'s rate to a local RabbitMQ, one sends as many.
_SLOW_PUBLISH = 0.010

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
    and the next send tries again.
    """
    from celery.backends.redis import RedisBackend

    backend = app.backend  # this thread's instance
    if isinstance(backend, RedisBackend) and not backend.thread_safe:
        backend.on_task_call = _no_subscription


def _no_subscription(producer: Any, task_id: str) -> None:
    """``on_task_call`` of a sender thread's Redis result backend: nothing to subscribe to."""


class _Job:
    """One publish: handed to a sender thread, its outcome handed back to the loop."""

    __slots__ = ("abandoned", "error", "future", "options", "signature", "task_id")

    def __init__(
        self, signature: Any, options: dict[str, Any], future: asyncio.Future[str]
    ) -> None:
        self.signature = signature
        self.options = options
        self.future = future
        self.task_id = ""
        self.error: Exception | None = None
        #: Set by the loop when nobody waits any more (timed out, cancelled): not started then.
        self.abandoned = False


class _Sender:
    """One loop's publishing threads for one Celery app, each with its own producer.

    Built for bulk as much as for single sends, where a ``ThreadPoolExecutor`` with a kombu
    producer pool cost each send about twice ``.delay()``'s CPU (a future chained across threads,
    a loop wake-up per send, a producer revived from the pool): here a job is one queue put, a
    thread keeps its producer and connection for its life, and outcomes go back to the loop in
    batches (one wake-up for all the publishes that finished while the loop was busy). One thread
    serves a broker nearby best; more start only while publishes wait on a distant broker.
    """

    # No reference to the loop (it lives in the loop's own loopsafe state): the loop is reached
    # through the futures of the jobs in flight, and through `stopped` while closing.
    def __init__(self, app: Any) -> None:
        self.app = app
        self.pid = os.getpid()
        self.name = f"loopsafe-send-{app.main or 'celery'}"
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.finished: collections.deque[_Job] = collections.deque()
        self.delivery_pending = False
        self.lock = threading.Lock()  # guards the two counts
        self.threads = 0
        self.idle = 0
        self.connections: list[Any] = []  # each thread's: kept for a forked child, see drop()
        self.stopped: asyncio.Future[None] | None = None

    def submit(self, job: _Job) -> None:
        """On the loop: queue `job`, starting the first thread (more start as publishes wait)."""
        self.jobs.put(job)
        try:
            self._add_thread_if(self.threads == 0)
        except BaseException:
            job.abandoned = True
            raise

    def _add_thread_if(self, needed: bool) -> None:
        with self.lock:
            start = needed and self.idle == 0 and self.threads < SENDER_THREADS
            if start:
                self.threads += 1
        if start:
            try:
                threading.Thread(target=self._serve, name=self.name, daemon=True).start()
            except BaseException:
                with self.lock:
                    self.threads -= 1
                raise

    def _serve(self) -> None:
        """A sender thread: publish jobs with this thread's producer until told to stop."""
        connection = producer = None
        try:
            while (job := self._next_job()) is not None:
                if job.abandoned:
                    continue
                started = monotonic()
                connected = producer is not None
                try:
                    if not connected:
                        connection = self.app.connection_for_write()
                        self.connections.append(connection)
                        producer = self.app.amqp.Producer(connection)
                    _skip_result_subscription(self.app)
                    result = job.signature.apply_async(producer=producer, **job.options)
                    job.task_id = result.id
                    # Released here, in this thread: with a notifying result backend its
                    # finaliser unsubscribes from this thread's backend (celery/celery#10477).
                    del result
                except Exception as exc:  # handed to the caller, as apply_async would raise it
                    job.error = exc
                self._hand_back(job)
                if connected and monotonic() - started > _SLOW_PUBLISH and not self.jobs.empty():
                    # A broker far away: publishes queued behind this one get a thread too.
                    with contextlib.suppress(RuntimeError):  # no more threads: go on with these
                        self._add_thread_if(True)
        finally:
            if connection is not None and self.pid == os.getpid():
                connection.close()
            self._thread_ended()

    def _next_job(self) -> _Job | None:
        try:
            return self.jobs.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            self.idle += 1
        try:
            return self.jobs.get()
        finally:
            with self.lock:
                self.idle -= 1

    def _hand_back(self, job: _Job) -> None:
        """In a sender thread: queue the outcome; wake the loop unless a wake-up is pending."""
        self.finished.append(job)
        if not self.delivery_pending:
            self.delivery_pending = True
            _call_in_loop(job.future.get_loop(), self._deliver)

    def _deliver(self) -> None:
        """On the loop: settle the futures of every publish finished since the last wake-up."""
        self.delivery_pending = False  # first: a publish finishing from here on wakes us again
        finished = self.finished
        while finished:
            job = finished.popleft()
            if job.future.done():  # timed out or cancelled meanwhile
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.task_id)

    def _thread_ended(self) -> None:
        with self.lock:
            self.threads -= 1
            last = self.threads == 0
        stopped = self.stopped
        if last and stopped is not None:
            _call_in_loop(stopped.get_loop(), self._mark_stopped)

    def _mark_stopped(self) -> None:
        stopped, self.stopped = self.stopped, None
        if stopped is not None and not stopped.done():
            stopped.set_result(None)

    def _stop_threads(self) -> None:
        for _ in range(SENDER_THREADS):  # one each for every thread there may be
            self.jobs.put(None)

    async def aclose(self) -> None:
        """Stop the threads once their queued publishes are done; each closes its connection."""
        with self.lock:
            running = self.threads
        if not running:  # no thread ever started: nothing to stop, no future left behind
            return
        stopped = self.stopped = asyncio.get_running_loop().create_future()
        self._stop_threads()
        await stopped

    def drop(self) -> None:
        """Let go without I/O on the loop: a forked child (the parent's sockets: kept, never
        closed), or a loop closed early (the threads close their own connections and end)."""
        if self.pid != os.getpid():
            _inherited.append(self)  # no threads here; the connections are the parent's
            return
        self._stop_threads()


def _call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody is left to tell
        loop.call_soon_threadsafe(callback)


class _SendTimedOut(Exception):
    """Set on a send's future when its timeout passes; `send` turns it into its error."""


def _time_out(future: asyncio.Future[str]) -> None:
    if not future.done():
        future.set_exception(_SendTimedOut())


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
    ``Signature.delay`` merges them (partial arguments first). The message is the one
    ``apply_async`` would publish (it is built and sent by ``apply_async``, in a publishing thread
    of this loop, with that thread's producer). Returns the task's ``AsyncResult``; await it with
    `loopsafe.celery.result`.

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
    loop = asyncio.get_running_loop()
    sender = _sender_for(app)
    job = _Job(signature, extra, loop.create_future())
    sender.submit(job)
    timer = loop.call_later(timeout, _time_out, job.future)
    try:
        task_id = await job.future
    except _SendTimedOut:
        _log.warning("loopsafe.celery_send_timeout", task=signature.task, timeout=timeout)
        raise BrokerUnavailableError(
            f"Celery task {signature.task!r} was not handed to the broker "
            f"{redact_dsn(str(app.conf.broker_url or ''))!r} within {timeout:g} s: the broker "
            "is down or not answering, or this loop queued more sends than its "
            f"{SENDER_THREADS} publishing threads could hand over in time. Check the broker is "
            "running and reachable, or raise send_timeout (send(task.s(...).set(send_timeout=30)))."
        ) from None
    except (OSError, OperationalError) as exc:
        raise BrokerUnavailableError(
            f"Celery task {signature.task!r} could not be sent: the broker "
            f"{redact_dsn(str(app.conf.broker_url or ''))!r} is unreachable ({exc}). Check it is "
            "running and reachable."
        ) from exc
    finally:
        timer.cancel()
        # Still queued (timed out, cancelled): it never starts. One under way may still land.
        job.abandoned = True
    async_result = app.AsyncResult(task_id)
    if parent is not None and options.get("add_to_parent", True):
        parent.add_trail(async_result)
    return async_result
