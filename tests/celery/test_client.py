"""loopsafe.celery.send and result: the async client, against real brokers and real workers.

Brokers: the suite's Redis and RabbitMQ (``$LOOPSAFE_TEST_AMQP_URL``, default the local one; the
RabbitMQ cases skip with a reason when none answers). Result backend: Redis, except the polling
fallback (the filesystem backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery.result import AsyncResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loopsafe
from loopsafe.celery import BrokerUnavailableError, ResultTimeoutError, result, send
from loopsafe.testing import EmbeddedRedis

from .client_app import make_app
from .conftest import AMQP_URL, WorkerEnv, amqp_reachable
from .conftest import Worker as _Worker
from .tcp_proxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.celery, pytest.mark.redis]

BROKERS = [
    "redis",
    pytest.param(
        "amqp",
        marks=pytest.mark.skipif(not amqp_reachable(), reason=f"no RabbitMQ at {AMQP_URL}"),
    ),
]


class ClientWorker(_Worker):
    """A real worker of `client_app` (broker and result backend only, no database)."""

    def command(self, args: list[str]) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "tests.celery.client_app", "worker",
            "-Q", self.env.queue, "-n", f"{uuid.uuid4().hex[:8]}@loopsafe-client-tests",
            "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat", *args,
        ]  # fmt: skip


def environment(broker_url: str, backend_url: str, redis_url: str) -> WorkerEnv:
    return WorkerEnv(
        broker_url=broker_url, backend_url=backend_url, redis_url=redis_url, postgres_url=""
    )


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    """Start client-app workers for a test; any still running at its end are killed."""
    started: list[ClientWorker] = []

    def start(env: WorkerEnv, args: tuple[str, ...] = ("-P", "threads", "-c", "4")) -> ClientWorker:
        worker = ClientWorker(env, tmp_path / f"worker-{len(started)}.log", list(args))
        started.append(worker)
        return worker.start()  # type: ignore[return-value]

    yield start
    for worker in started:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()


def broker_url_for(broker: str, redis_url: str) -> str:
    return redis_url if broker == "redis" else AMQP_URL


def delete_queue(app: Any, queue: str) -> None:
    """RabbitMQ keeps declared queues: take this test's away (Redis keys expire with the run)."""
    if not app.conf.broker_url.startswith("amqp"):
        return
    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(queue)


@pytest.fixture(params=BROKERS)
def broker_env(request: pytest.FixtureRequest, redis_url: str) -> Iterator[WorkerEnv]:
    env = environment(broker_url_for(request.param, redis_url), redis_url, redis_url)
    yield env
    admin = make_app(env.broker_url, env.backend_url, env.queue)
    try:
        delete_queue(admin, env.queue)
    finally:
        admin.close()


@pytest.fixture
def client(broker_env: WorkerEnv) -> Iterator[Any]:
    app = make_app(broker_env.broker_url, broker_env.backend_url, broker_env.queue)
    yield app
    app.close()


# --- sending and waiting, with a real worker -------------------------------------------------------


async def test_send_then_result_returns_the_worker_s_value(
    broker_env: WorkerEnv, client: Any, workers: Any
) -> None:
    """Many concurrent sends from one loop reach a real worker; every result comes back."""
    workers(broker_env)
    add = client.tasks["client.add"]
    sent = await asyncio.gather(*(send(add, i, 1000) for i in range(100)))
    assert all(isinstance(one, AsyncResult) for one in sent)
    assert len({one.id for one in sent}) == 100
    values = await asyncio.gather(*(result(one, timeout=60) for one in sent))
    assert values == [i + 1000 for i in range(100)]


async def test_a_failed_task_raises_its_exception(
    broker_env: WorkerEnv, client: Any, workers: Any
) -> None:
    workers(broker_env)
    sent = await send(client.tasks["client.fail"], "no such roadmap")
    with pytest.raises(LookupError, match="no such roadmap"):
        await result(sent, timeout=60)


async def test_signature_options_reach_the_worker(
    broker_env: WorkerEnv, client: Any, workers: Any
) -> None:
    """A signature carries apply_async options; send()'s arguments merge as Signature.delay's."""
    workers(broker_env)
    task_id = f"options-{uuid.uuid4()}"
    signature = client.tasks["client.describe"].s(1, a="x").set(task_id=task_id, shadow="sh")
    seen = await result(await send(signature, 2, b="y"), timeout=60)
    assert seen["args"] == [2, 1]  # Celery puts partial arguments first
    assert seen["kwargs"] == {"a": "x", "b": "y"}
    assert seen["id"] == task_id
    assert seen["headers"]["shadow"] == "sh"
    assert seen["routing_key"] == broker_env.queue
    # Sent from this thread: replies (rpc:// backend) would come back to this thread's id.
    assert seen["reply_to"] == client.thread_oid


async def test_a_result_stored_before_waiting_returns_at_once(
    broker_env: WorkerEnv, client: Any, workers: Any
) -> None:
    """Subscribing after the outcome was published loses nothing: the stored key is read too."""
    workers(broker_env)
    sent = await send(client.tasks["client.add"], 20, 22)
    done = client.AsyncResult(sent.id)
    deadline = time.monotonic() + 60
    while not await asyncio.to_thread(done.ready):
        assert time.monotonic() < deadline, "the worker never ran the task"
        await asyncio.sleep(0.05)
    assert await result(sent, timeout=5) == 42


# --- what the broker receives ------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "priority": st.integers(0, 9),
        "shadow": st.text(min_size=1, max_size=10),
        "headers": st.dictionaries(
            st.text("abcdefgh", min_size=1, max_size=5).map(lambda key: f"x-{key}"),
            st.text(max_size=8),
            max_size=2,
        ),
        "time_limit": st.integers(1, 1000),
        "ignore_result": st.booleans(),
    },
)


def raw_messages(app: Any, queue: str, count: int) -> list[dict[str, Any]]:
    """The next `count` messages of `queue` as a consumer sees them (minus the delivery tag)."""
    got: list[dict[str, Any]] = []
    with (
        app.connection_for_read() as connection,
        connection.SimpleQueue(app.amqp.queues[queue], no_ack=True) as simple,
    ):
        for _ in range(count):
            message = simple.get(timeout=10)
            properties = dict(message.properties)
            properties.pop("delivery_tag", None)
            got.append(
                {
                    "body": message.body,
                    "headers": message.headers,
                    "properties": properties,
                    "content_type": message.content_type,
                    "content_encoding": message.content_encoding,
                    "routing_key": message.delivery_info.get("routing_key"),
                    "exchange": message.delivery_info.get("exchange"),
                }
            )
    return got


@pytest.mark.parametrize("broker", BROKERS)
def test_a_worker_cannot_tell_send_from_apply_async(broker: str, redis_url: str) -> None:
    """The same call through send() and apply_async() puts identical messages on the queue."""
    env = environment(broker_url_for(broker, redis_url), redis_url, redis_url)
    app = make_app(env.broker_url, env.backend_url, env.queue)

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        args=st.lists(JSON, max_size=3),
        kwargs=st.dictionaries(st.text(max_size=6), JSON, max_size=3),
        options=OPTIONS,
    )
    def check(args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> None:
        task_id = str(uuid.uuid4())
        signature = app.tasks["client.describe"].signature(args, kwargs, task_id=task_id, **options)

        async def both() -> None:
            await send(signature)
            # apply_async from the same thread (the loop's), as an endpoint would call .delay().
            signature.apply_async()

        asyncio.run(both())
        via_send, via_apply_async = raw_messages(app, env.queue, 2)
        assert via_send == via_apply_async

    try:
        check()
    finally:
        delete_queue(app, env.queue)
        app.close()


# --- the loop keeps serving while the broker is down -----------------------------------------------


def stalled_broker() -> contextlib.AbstractContextManager[TcpProxy]:
    """A broker address that accepts connections and never answers."""
    proxy = TcpProxy("127.0.0.1", 9)  # the target is never dialled while stalled
    proxy.stall = True

    @contextlib.contextmanager
    def running() -> Iterator[TcpProxy]:
        try:
            yield proxy
        finally:
            proxy.close()

    return running()


def refused_broker() -> contextlib.AbstractContextManager[TcpProxy]:
    """A broker address where nothing listens (connection refused)."""
    proxy = TcpProxy("127.0.0.1", 9)
    proxy.cut(stop_listening=True)

    @contextlib.contextmanager
    def running() -> Iterator[TcpProxy]:
        try:
            yield proxy
        finally:
            proxy.close()

    return running()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
@pytest.mark.parametrize("failure", ["refused", "stalled"])
async def test_broker_down_raises_within_the_timeout_while_other_requests_are_served(
    scheme: str, failure: str, redis_url: str
) -> None:
    """An endpoint sending to a dead broker answers 503 within send_timeout; /ping kept working."""
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    with refused_broker() if failure == "refused" else stalled_broker() as dead:
        broker = (
            f"redis://127.0.0.1:{dead.port}/0"
            if scheme == "redis"
            else f"amqp://guest:guest@127.0.0.1:{dead.port}//"
        )
        app = make_app(broker, redis_url, f"down-{uuid.uuid4().hex[:8]}")
        api = FastAPI()
        pings: list[float] = []

        @api.post("/enqueue")
        async def enqueue() -> JSONResponse:
            try:
                sent = await send(app.tasks["client.add"].s(1, 2).set(send_timeout=1.5))
            except BrokerUnavailableError as exc:
                return JSONResponse({"error": str(exc)}, status_code=503)
            return JSONResponse({"id": sent.id})

        @api.get("/ping")
        async def ping() -> dict[str, str]:
            pings.append(time.monotonic())
            return {"ok": "yes"}

        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            started = time.monotonic()
            enqueue_request = asyncio.create_task(http.post("/enqueue"))
            while not enqueue_request.done():
                assert (await http.get("/ping")).status_code == 200
                await asyncio.sleep(0.02)
            response = await enqueue_request
            took = time.monotonic() - started
        app.close()
    assert response.status_code == 503
    assert "not answering" in response.json()["error"] or "unreachable" in response.json()["error"]
    # The loop served other requests while the send was failing (it did not block on the broker).
    assert len(pings) >= 5, (pings, took)


@pytest.mark.parametrize("ending", ["timed out", "cancelled"])
async def test_a_send_given_up_while_queued_never_reaches_the_broker(
    ending: str, redis_url: str
) -> None:
    """36 sends to a broker 0.2 s away, all given up after 0.15 s, while the first thread is still
    connecting: what is under way lands (already started), the queued ones never do."""
    from loopsafe.celery._send import SENDER_THREADS

    upstream = urlsplit(redis_url)
    with tcp_proxy(upstream.hostname or "127.0.0.1", upstream.port or 6379, delay=0.1) as slow:
        queue = f"given-up-{uuid.uuid4().hex[:8]}"
        app = make_app(f"redis://127.0.0.1:{slow.port}{upstream.path}", redis_url, queue)
        key = f"{app.conf.broker_transport_options['global_keyprefix']}{queue}"
        add = app.tasks["client.add"]
        sends = [
            asyncio.create_task(send(add.s(n, n).set(send_timeout=0.15)))
            for n in range(SENDER_THREADS + 20)
        ]
        if ending == "cancelled":
            await asyncio.sleep(0.05)
            for one in sends:
                one.cancel()
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        expected = asyncio.CancelledError if ending == "cancelled" else BrokerUnavailableError
        assert all(isinstance(outcome, expected) for outcome in outcomes), outcomes
        with redis.Redis.from_url(redis_url) as admin:
            try:
                await asyncio.to_thread(wait_until, lambda: admin.llen(key) >= 1, 20)
                # Long enough for every queued publish to land if they were not dropped (threads
                # double each 0.2 s round trip while publishes queue behind slow ones): 36 would.
                await asyncio.sleep(4)
                assert 1 <= admin.llen(key) <= SENDER_THREADS
                assert len(sender_threads()) <= SENDER_THREADS
            finally:
                admin.delete(key)
                app.close()


# --- waiting: cancellation, sharing, timeouts, restarts -----------------------------------------


def subscribers(redis_url: str, channel: str) -> int:
    with redis.Redis.from_url(redis_url) as admin:
        counts = admin.pubsub_numsub(channel)
    return int(counts[0][1])


def wait_until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


async def test_cancelling_a_waiter_frees_its_subscription(redis_url: str) -> None:
    app = make_app(redis_url, redis_url, f"cancel-{uuid.uuid4().hex[:8]}")
    try:
        pending = app.AsyncResult(str(uuid.uuid4()))
        channel = app.backend.get_key_for_task(pending.id).decode()
        waiter = asyncio.create_task(result(pending, timeout=60))
        await asyncio.to_thread(wait_until, lambda: subscribers(redis_url, channel) == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.to_thread(wait_until, lambda: subscribers(redis_url, channel) == 0)
        # The shared connection still serves the next waiter of the same task.
        again = asyncio.create_task(result(pending, timeout=60))
        await asyncio.to_thread(wait_until, lambda: subscribers(redis_url, channel) == 1)
        await asyncio.to_thread(app.backend.store_result, pending.id, "late", "SUCCESS")
        assert await again == "late"
    finally:
        app.close()


def connections_named(redis_url: str, name: str) -> list[dict[str, Any]]:
    with redis.Redis.from_url(redis_url) as admin:
        return [c for c in admin.client_list() if c.get("name") == name]


async def test_500_waiters_share_one_pubsub_connection(redis_url: str) -> None:
    """500 waiters of one loop: one subscribed connection, a few for reads, no polling."""
    app = make_app(redis_url, redis_url, f"many-{uuid.uuid4().hex[:8]}")
    try:
        pending = [app.AsyncResult(str(uuid.uuid4())) for _ in range(500)]
        waiters = [asyncio.create_task(result(one, timeout=60)) for one in pending]

        def all_subscribed() -> bool:
            subscribed = [
                c for c in connections_named(redis_url, "loopsafe-celery-results") if int(c["sub"])
            ]
            return len(subscribed) == 1 and int(subscribed[0]["sub"]) == 500

        await asyncio.to_thread(wait_until, all_subscribed, 30)
        ours = connections_named(redis_url, "loopsafe-celery-results")
        assert len(ours) <= 5, ours  # the pub/sub connection + at most 4 for reads

        def store_all() -> None:
            for index, one in enumerate(pending):
                app.backend.store_result(one.id, index, "SUCCESS")

        await asyncio.to_thread(store_all)
        assert await asyncio.gather(*waiters) == list(range(500))
        assert len(connections_named(redis_url, "loopsafe-celery-results")) <= 5
    finally:
        app.close()


async def test_a_result_timeout_raises_a_clear_error(redis_url: str) -> None:
    app = make_app(redis_url, redis_url, f"timeout-{uuid.uuid4().hex[:8]}")
    try:
        pending = app.AsyncResult(str(uuid.uuid4()))
        with pytest.raises(ResultTimeoutError, match=r"did not finish within 0\.2 s") as caught:
            await result(pending, timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, loopsafe.LoopsafeError)
        channel = app.backend.get_key_for_task(pending.id).decode()
        await asyncio.to_thread(wait_until, lambda: subscribers(redis_url, channel) == 0)
    finally:
        app.close()


async def test_a_waiter_survives_a_result_backend_restart() -> None:
    """The backend restarts mid-wait: the waiter reconnects, re-reads, and gets the outcome."""
    with EmbeddedRedis() as backend_server:
        app = make_app(backend_server.url, backend_server.url, f"restart-{uuid.uuid4().hex[:8]}")
        try:
            pending = app.AsyncResult(str(uuid.uuid4()))
            channel = app.backend.get_key_for_task(pending.id).decode()
            waiter = asyncio.create_task(result(pending, timeout=60))
            await asyncio.to_thread(
                wait_until, lambda: subscribers(backend_server.url, channel) == 1
            )
            await asyncio.to_thread(backend_server.kill)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(backend_server.start)
            await asyncio.to_thread(
                wait_until, lambda: subscribers(backend_server.url, channel) == 1, 30
            )
            await asyncio.to_thread(app.backend.store_result, pending.id, "after", "SUCCESS")
            assert await waiter == "after"
        finally:
            app.close()


async def test_an_outcome_stored_while_the_subscription_was_down_is_found() -> None:
    """The pub/sub connection drops and the outcome is published while it is down: once the
    subscription is restored the waiter re-reads the key and returns."""
    with EmbeddedRedis() as backend_server, tcp_proxy("127.0.0.1", backend_server.port) as proxy:
        through_proxy = f"redis://127.0.0.1:{proxy.port}/0"
        app = make_app(through_proxy, through_proxy, f"resub-{uuid.uuid4().hex[:8]}")
        direct = make_app(backend_server.url, backend_server.url, "resub-direct")
        try:
            pending = app.AsyncResult(str(uuid.uuid4()))
            channel = app.backend.get_key_for_task(pending.id).decode()
            waiter = asyncio.create_task(result(pending, timeout=120))
            await asyncio.to_thread(
                wait_until, lambda: subscribers(backend_server.url, channel) == 1
            )
            await asyncio.to_thread(proxy.cut, stop_listening=True)
            await asyncio.to_thread(
                wait_until, lambda: subscribers(backend_server.url, channel) == 0
            )
            # Published to nobody: only a re-read after re-subscribing can find it.
            await asyncio.to_thread(direct.backend.store_result, pending.id, "missed", "SUCCESS")
            await asyncio.to_thread(proxy.listen)
            # A deadline, not a speed goal: without the re-read the waiter sleeps until the
            # safety net (_RECHECK_INTERVAL, 30 s) or its own timeout.
            done, _ = await asyncio.wait({waiter}, timeout=20)
            assert waiter in done, "the restored subscription did not wake the waiter"
            assert waiter.result() == "missed"
        finally:
            direct.close()
            app.close()


async def test_sending_opens_no_result_backend_connection(redis_url: str) -> None:
    """Celery subscribes to a task's result channel in the thread that sends it; send() does not
    (result() has its own connection), so the result backend sees no connection from sends."""
    with EmbeddedRedis() as backend_server:
        app = make_app(redis_url, backend_server.url, f"nosub-{uuid.uuid4().hex[:8]}")
        try:
            with redis.Redis.from_url(backend_server.url) as admin:
                before = len(admin.client_list())
                sent = await asyncio.gather(
                    *(send(app.tasks["client.add"], n, n) for n in range(40))
                )
                assert len({one.id for one in sent}) == 40
                assert len(admin.client_list()) == before
        finally:
            app.close()


async def test_a_backend_shared_by_all_threads_keeps_its_subscriptions(redis_url: str) -> None:
    """With ``result_backend_thread_safe`` every thread uses one backend: send() must not change
    it, or a blocking ``AsyncResult.get()`` elsewhere in the process would lose its subscription."""
    app = make_app(redis_url, redis_url, f"shared-{uuid.uuid4().hex[:8]}")
    app.conf.result_backend_thread_safe = True
    try:
        await send(app.tasks["client.add"], 1, 2)
        shared = app.backend
        assert shared is await asyncio.to_thread(lambda: app.backend)
        assert "on_task_call" not in vars(shared)
    finally:
        app.close()


@pytest.mark.parametrize("broker", BROKERS)
async def test_send_recovers_after_a_broker_restart(
    broker: str, redis_url: str, workers: Any
) -> None:
    """Every broker connection drops (a restart); later sends reconnect and reach the worker."""
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            server = stack.enter_context(EmbeddedRedis())
            target = ("127.0.0.1", server.port)
        else:
            target = ("127.0.0.1", int(AMQP_URL.rsplit(":", 1)[1].split("/")[0]))
        proxy = stack.enter_context(tcp_proxy(*target))
        broker_url = (
            f"redis://127.0.0.1:{proxy.port}/0"
            if broker == "redis"
            else f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
        )
        env = environment(broker_url, redis_url, redis_url)
        app = make_app(broker_url, redis_url, env.queue)
        try:
            workers(env)
            add = app.tasks["client.add"]
            assert await result(await send(add, 1, 1), timeout=60) == 2
            # The restart: every connection cut, nothing listening for a moment.
            await asyncio.to_thread(proxy.cut, stop_listening=True)
            if broker == "redis":
                await asyncio.to_thread(server.restart)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(proxy.listen)
            later = await send(add.s(2, 2).set(send_timeout=30))
            assert await result(later, timeout=60) == 4
        finally:
            delete_queue(app, env.queue)
            app.close()


# --- other result backends: polling ----------------------------------------------------------------


async def test_a_backend_without_notifications_is_polled(
    redis_url: str, tmp_path: Path, workers: Any
) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    backend = f"file://{folder}"
    env = environment(redis_url, backend, redis_url)
    app = make_app(redis_url, backend, env.queue)
    try:
        workers(env, ("-P", "solo"))
        sent = await send(app.tasks["client.sleep_then"], 0.3, {"polled": True})
        assert await result(sent, timeout=60) == {"polled": True}
        failed = await send(app.tasks["client.fail"], "polled failure")
        with pytest.raises(LookupError, match="polled failure"):
            await result(failed, timeout=60)
        with pytest.raises(ResultTimeoutError):
            await result(app.AsyncResult(str(uuid.uuid4())), timeout=0.1)
    finally:
        app.close()


# --- resources: per loop, closed at loop end, dropped in forked children ------------------------


def sender_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("loopsafe-send-")]


def test_senders_and_waiters_close_with_their_loop(redis_url: str) -> None:
    """asyncio.run ends: the loop's publishing threads stop and its connections close."""
    app = make_app(redis_url, redis_url, f"close-{uuid.uuid4().hex[:8]}")
    try:

        async def use() -> None:
            await send(app.tasks["client.add"], 1, 2)
            pending = app.AsyncResult(str(uuid.uuid4()))
            with pytest.raises(ResultTimeoutError):
                await result(pending, timeout=0.05)
            assert sender_threads()
            assert connections_named(redis_url, "loopsafe-celery-results")

        asyncio.run(use())
        wait_until(lambda: not sender_threads())
        wait_until(lambda: not connections_named(redis_url, "loopsafe-celery-results"))
        rows = {row["name"]: row for row in loopsafe.stats()}
        assert rows["loopsafe.celery.senders"]["live"] == 0
        assert rows["loopsafe.celery.result_hubs"]["live"] == 0
        assert rows["loopsafe.celery.senders"]["closed"] >= 1
    finally:
        app.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_sends_on_its_own_connections(redis_url: str) -> None:
    """A child forked from a process with a live sender makes its own; the parent's still work."""
    app = make_app(redis_url, redis_url, f"fork-{uuid.uuid4().hex[:8]}")
    loop = asyncio.new_event_loop()
    try:
        add = app.tasks["client.add"]
        loop.run_until_complete(send(add, 1, 1))
        pid = os.fork()
        if pid == 0:  # the child: a fresh loop, fresh senders; exits without Python cleanup
            code = 1
            try:
                asyncio.run(send(add, 2, 2))
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child did not finish within 30 s")
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's loop still sends on its own (never closed by the child) connections.
        loop.run_until_complete(send(add, 3, 3))
        with redis.Redis.from_url(redis_url) as admin:
            queued = admin.llen(
                f"{app.conf.broker_transport_options['global_keyprefix']}{app.conf.task_default_queue}"
            )
        assert queued == 3
    finally:
        loop.run_until_complete(loopsafe.aclose_all())
        loop.close()
        delete_queue(app, app.conf.task_default_queue)
        app.close()


# --- bad input ---------------------------------------------------------------------------------------


async def test_send_rejects_what_is_not_a_task(redis_url: str) -> None:
    with pytest.raises(TypeError, match="takes a Celery task or signature"):
        await send("client.add", 1, 2)


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("nan")])
async def test_send_rejects_a_bad_send_timeout(redis_url: str, bad: object) -> None:
    app = make_app(redis_url, redis_url, f"bad-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(ValueError, match="send_timeout must be a positive number"):
            await send(app.tasks["client.add"].s(1, 2).set(send_timeout=bad))
    finally:
        app.close()


async def test_result_rejects_what_is_not_an_async_result() -> None:
    with pytest.raises(TypeError, match="takes a Celery AsyncResult"):
        await result("some-task-id")


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [(-1, ValueError, ">= 0"), (float("nan"), ValueError, ">= 0"), ("1", TypeError, "number")],
)
async def test_result_rejects_a_bad_timeout(
    redis_url: str, bad: object, error: type[Exception], match: str
) -> None:
    app = make_app(redis_url, redis_url, f"bad-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(error, match=match):
            await result(app.AsyncResult("x"), timeout=bad)  # type: ignore[arg-type]
    finally:
        app.close()


async def test_result_without_a_result_backend_says_so(redis_url: str) -> None:
    from celery import Celery

    app = Celery("no_backend", broker=redis_url, set_as_current=False)
    try:
        with pytest.raises(ValueError, match="has no result backend"):
            await result(app.AsyncResult("x"), timeout=1)
    finally:
        app.close()


async def test_adelay_on_an_async_task_sends_like_send(redis_url: str) -> None:
    """``await task.adelay(...)`` on an `async_task` queues the same message as send()."""
    from loopsafe.celery import async_task

    app = make_app(redis_url, redis_url, f"adelay-{uuid.uuid4().hex[:8]}")

    @async_task(app, name="client.async_double", shared=False)
    async def double(n: int) -> int:
        return n * 2

    try:
        sent = await double.adelay(21)
        assert isinstance(sent, AsyncResult)
        (message,) = await asyncio.to_thread(raw_messages, app, app.conf.task_default_queue, 1)
        assert message["headers"]["task"] == "client.async_double"
        assert message["headers"]["id"] == sent.id
        assert message["body"].startswith(b"[[21], {}")
    finally:
        app.close()


async def test_a_sub_task_sent_from_a_worker_task_keeps_its_parent(
    broker_env: WorkerEnv, client: Any, workers: Any
) -> None:
    """send() inside a running task (via run_async) gives the child its parent and root ids."""
    workers(broker_env)
    parent = await send(client.tasks["client.spawn"], "from-parent")
    child_id = await result(parent, timeout=60)
    seen = await result(client.AsyncResult(child_id), timeout=60)
    assert seen["args"] == ["from-parent"]
    assert seen["parent_id"] == parent.id
    assert seen["root_id"] == parent.id
