"""The async Celery client (`loopsafe.celery.send` / `result`) against the usual alternatives.

Three measurements, one run:

1. **Loop latency under sends.** One uvicorn worker; ``POST /send`` queues a task per request,
   open loop at 200 requests/s, to a Redis broker behind a TCP proxy on localhost that adds 10 ms
   each way (20 ms per round trip). Meanwhile ``GET /cheap`` is probed at 20 requests/s, open loop;
   its p99 (from the probe's scheduled time, so a stalled loop is not hidden) is compared with its
   p99 on the idle server. The first 2 s on each fresh server (publishing threads starting,
   broker connections opening) are measured apart as the cold start. Side by side: ``await send(task, …)``, ``task.delay()`` on the loop, and
   ``await run_in_threadpool(task.delay, …)``. Goal: ``send`` ≤ 2× idle p99.
2. **Send throughput from one loop**, straight to Redis and to RabbitMQ (no proxy): ``send`` with
   up to 64 in flight vs ``.delay()`` in a plain loop on one thread. Goal: ≥ 80 %.
3. **Result latency.** 500 tasks on a real worker (threads pool), each sleeping 0–2 s and
   returning its wall-clock finish time; 500 concurrent ``await result(...)`` on one loop vs 500
   ``ready()`` poll loops at 100 ms (each poll in a thread). Latency = wake-up − finish, split at
   the worker's store (``date_done``) and at the PUBLISH (seen by a separate subscriber process,
   `_celery_result_watch.py`). Also the Redis connections the waiters held. Goal: p50 ≤ 5 ms, no
   connection per waiter.

Servers: ``$LOOPSAFE_BENCH_REDIS_URL`` (else ``$LOOPSAFE_TEST_REDIS_URL``, else a private
embedded Redis); RabbitMQ at ``$LOOPSAFE_BENCH_AMQP_URL`` (else ``$LOOPSAFE_TEST_AMQP_URL``, else
``amqp://guest:guest@127.0.0.1:5672//``; skipped with a note if none answers). ``--quick``: a
short smoke run that writes no results. Otherwise writes results/celery_client.md and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _celery_client_app import make_celery  # noqa: E402
from _report import write_results  # noqa: E402

AMQP_URL = (
    os.environ.get("LOOPSAFE_BENCH_AMQP_URL")
    or os.environ.get("LOOPSAFE_TEST_AMQP_URL")
    or "amqp://guest:guest@127.0.0.1:5672//"
)
#: Each direction of the proxy adds this: 20 ms per round trip.
ONE_WAY_DELAY = 0.010
SEND_RATE = 200.0
#: The client name of the connections `loopsafe.celery.result` opens (pub/sub and reads).
HUB_NAME = "loopsafe-celery-results"
MODES = ("idle", "send", "delay", "threadpool")
#: Seconds of load on a fresh server before the measured window (reported apart).
COLD_START = 2.0
PROBE_RATE = 20.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def amqp_reachable() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1):
            return True
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    named = os.environ.get("LOOPSAFE_BENCH_REDIS_URL") or os.environ.get("LOOPSAFE_TEST_REDIS_URL")
    if named:
        yield named
        return
    from loopsafe.testing import EmbeddedRedis

    with EmbeddedRedis(executable=shutil.which("redis-server")) as server:
        yield server.url


@contextmanager
def child(command: list[str], env: dict[str, str], ready: Any, what: str) -> Iterator[None]:
    """A subprocess in its own process group, ready when `ready()` is true; killed at the end."""
    # Output to a file, never a pipe: a pipe nobody reads fills up and blocks the child.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 60
            while not ready():
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{what} exited: {log.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} not ready within 60 s")
                time.sleep(0.1)
            yield
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(20)


def environment(broker: str, backend: str, queue: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LOOPSAFE_BENCH_CELERY_BROKER=broker,
        LOOPSAFE_BENCH_CELERY_BACKEND=backend,
        LOOPSAFE_BENCH_CELERY_QUEUE=queue,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), str(ROOT), env.get("PYTHONPATH")])),
        **extra,
    )
    return env


def purge(broker: str, backend: str, queue: str) -> None:
    app = make_celery(broker, backend, queue)
    try:
        with app.connection_for_write() as connection:
            if broker.startswith("amqp"):
                connection.default_channel.queue_delete(queue)
            else:
                app.amqp.queues[queue](connection.default_channel).purge()
    finally:
        app.close()


# --- 1. loop latency under sends ---------------------------------------------------------------------


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams.

    The load generator shares two cores with the server it measures: httpx costs several times
    more CPU per request, which would show up as the server's latency.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: list[asyncio.StreamWriter] = []

    async def request(self, method: str, path: str) -> int:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.all.append(writer)
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status

    async def aclose(self) -> None:
        for writer in self.all:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self.all), return_exceptions=True)


async def open_loop(
    client: RawClient,
    method: str,
    path: str,
    rate: float,
    seconds: float,
    latencies: list[float],
    failures: Counter[str],
) -> None:
    """Fire requests at `rate`/s for `seconds` whatever the answers; latency from the schedule."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    count = int(rate * seconds)

    async def one(due: float) -> None:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            status = await asyncio.wait_for(client.request(method, path), 120)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            failures[type(exc).__name__] += 1
            return
        if status != 200:
            failures[f"HTTP {status}"] += 1
            return
        latencies.append(loop.time() - due)

    await asyncio.gather(*(one(start + i / rate) for i in range(count)))


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


async def load(
    port: int, mode: str, seconds: float, rate: float
) -> tuple[list[float], list[float], Counter[str], list[float]]:
    """Probe /cheap (and, unless idle, send on /send) open loop, first for `COLD_START` seconds
    on the fresh server, then, once those requests are answered, for `seconds`; (probes, sends,
    failures, probes of the cold start)."""
    client = RawClient(port)
    try:
        await client.request("GET", "/cheap")
        if mode != "idle":
            await client.request("POST", "/send")

        async def phase(
            length: float, probes: list[float], sends: list[float], failures: Counter[str]
        ) -> None:
            jobs = [open_loop(client, "GET", "/cheap", PROBE_RATE, length, probes, failures)]
            if mode != "idle":
                jobs.append(open_loop(client, "POST", "/send", rate, length, sends, failures))
            await asyncio.gather(*jobs)

        # The first seconds at full rate start the publishing threads and open their broker
        # connections (several round trips each through the proxy): measured apart, then the
        # steady state.
        cold: list[float] = []
        await phase(COLD_START, cold, [], Counter())
        probes: list[float] = []
        sends: list[float] = []
        failures: Counter[str] = Counter()
        await phase(seconds, probes, sends, failures)
        return probes, sends, failures, cold
    finally:
        await client.aclose()


def endpoint_latency(
    redis_url: str, seconds: float, rate: float, rounds: int
) -> dict[str, list[tuple[list[float], list[float], Counter[str], list[float]]]]:
    """Per mode, one (probe latencies, send latencies, failures) per round; rounds interleave
    the modes, so a burst of load from other processes on the machine hits them all alike."""
    import httpx

    runs: dict[str, list[tuple[list[float], list[float], Counter[str], list[float]]]] = {
        mode: [] for mode in MODES
    }
    target = urlsplit(redis_url)
    proxy_port = free_port()
    proxy = [
        sys.executable, "-m", "tests.celery.tcp_proxy", target.hostname or "127.0.0.1",
        str(target.port or 6379), "--port", str(proxy_port), "--delay", str(ONE_WAY_DELAY),
    ]  # fmt: skip
    # The proxy runs in its own process: in this one it would compete with the load generator.
    with child(proxy, dict(os.environ), lambda: port_open(proxy_port), "TCP delay proxy"):
        broker = f"redis://127.0.0.1:{proxy_port}/{target.path.lstrip('/') or '0'}"
        for _ in range(rounds):
            for mode in MODES:
                queue = f"bench-client-{uuid.uuid4().hex[:8]}"
                port = free_port()
                env = environment(
                    broker,
                    redis_url,
                    queue,
                    LOOPSAFE_BENCH_CELERY_MODE="send" if mode == "idle" else mode,
                )
                command = [
                    sys.executable, "-m", "uvicorn", "_celery_client_app:api",
                    "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1", "--loop", "asyncio", "--no-access-log",
                    "--log-level", "warning", "--timeout-keep-alive", "300",
                ]  # fmt: skip

                def ready(port: int = port) -> bool:
                    try:
                        response = httpx.get(f"http://127.0.0.1:{port}/cheap", timeout=1)
                    except httpx.HTTPError:
                        return False
                    return response.status_code == 200

                with child(command, env, ready, f"uvicorn ({mode})"):
                    runs[mode].append(asyncio.run(load(port, mode, seconds, rate)))
                purge(redis_url, redis_url, queue)  # the proxy's target: the same server
    return runs


# --- 2. send throughput ----------------------------------------------------------------------------


def throughput(broker: str, backend: str, count: int, rounds: int) -> tuple[float, float, float]:
    """Medians over `rounds`: sends/s through `send` from one loop, through `.delay()` from one
    thread, and the ratio of the two within each round."""
    import loopsafe.celery

    queue = f"bench-client-{uuid.uuid4().hex[:8]}"
    app = make_celery(broker, backend, queue)
    noop = app.tasks["bench.noop"]
    try:

        async def with_send() -> float:
            # Warm: this loop's publishing threads and their broker connections.
            await asyncio.gather(*(loopsafe.celery.send(noop, -1) for _ in range(64)))
            gate = asyncio.Semaphore(64)

            async def one(n: int) -> None:
                async with gate:
                    await loopsafe.celery.send(noop, n)

            start = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(count)))
            return count / (time.perf_counter() - start)

        def with_delay() -> float:
            noop.delay(-1)
            start = time.perf_counter()
            for n in range(count):
                noop.delay(n)
            return count / (time.perf_counter() - start)

        sends: list[float] = []
        delays: list[float] = []
        for _ in range(rounds):
            # Interleaved pairs, compared pair by pair: on a shared machine the load changes
            # from one second to the next, and a pair sees (nearly) the same load.
            delays.append(run_in_thread(with_delay))
            sends.append(asyncio.run(with_send()))
            purge(broker, backend, queue)
        ratios = [one / other for one, other in zip(sends, delays, strict=True)]
        return statistics.median(sends), statistics.median(delays), statistics.median(ratios)
    finally:
        purge(broker, backend, queue)
        app.close()


def run_in_thread(fn: Any) -> float:
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(600)
    return out[0]


# --- 3. result latency -----------------------------------------------------------------------------


async def poll(one: Any) -> Any:
    """The usual workaround: ``ready()`` (blocking, so in a thread) every 100 ms."""
    while True:
        if await asyncio.to_thread(one.ready):
            return one.result
        await asyncio.sleep(0.1)


def watch(what: str, redis_url: str, out: Path, *extra: str) -> Any:
    """A `_celery_result_watch` process (`what`: publishes or clients) writing to `out`."""
    command = [sys.executable, str(HERE / "_celery_result_watch.py"), what, redis_url, str(out)]
    return child([*command, *extra], dict(os.environ), out.exists, f"result watcher ({what})")


def result_latency(redis_url: str, waiters: int) -> dict[str, Any]:
    import random

    import redis

    import loopsafe.celery

    queue = f"bench-client-{uuid.uuid4().hex[:8]}"
    app = make_celery(redis_url, redis_url, queue)
    stamp = app.tasks["bench.stamp"]
    env = environment(redis_url, redis_url, queue)
    command = [
        sys.executable, "-m", "celery", "-A", "_celery_client_app", "worker", "-Q", queue,
        "-P", "threads", "-c", "100", "-l", "WARNING", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    ]  # fmt: skip
    admin = redis.Redis.from_url(redis_url)
    out: dict[str, Any] = {}

    # The worker is ready once it consumed a probe task.
    probe = stamp.delay(0)

    def probe_done() -> bool:
        return bool(probe.ready())

    try:
        with child(command, env, probe_done, "celery worker"), tempfile.TemporaryDirectory() as tmp:
            for how in ("await result", "ready() poll 100 ms"):
                rng = random.Random(7)

                async def run(how: str = how, rng: Any = rng) -> tuple[list[float], list[Any]]:
                    latencies: list[float] = []
                    woken: list[tuple[Any, float]] = []

                    async def one(seconds: float) -> None:
                        sent = await loopsafe.celery.send(stamp, seconds)
                        if how == "await result":
                            finished = await loopsafe.celery.result(sent, timeout=120)
                        else:
                            finished = await poll(sent)
                        now = time.time()
                        latencies.append(now - finished)
                        woken.append((sent, now))

                    # Every task sleeps 1-3 s: its waiter is in place before it finishes.
                    await asyncio.gather(*(one(rng.uniform(1, 3)) for _ in range(waiters)))
                    return latencies, woken

                baseline = len(admin.client_list())
                published = Path(tmp, f"published-{len(out)}")
                peaks = Path(tmp, f"clients-{len(out)}")
                with (
                    watch("publishes", redis_url, published),
                    watch("clients", redis_url, peaks, HUB_NAME),
                ):
                    latencies, woken = asyncio.run(run())
                # When the worker stored each outcome (Celery's date_done, set just before it
                # writes and publishes it), and when Redis published it: read afterwards.
                stored = [now - task.date_done.timestamp() for task, now in woken]
                seen = dict(line.split() for line in published.read_text().splitlines()[1:] if line)
                after_publish = [
                    now - float(seen[task.id]) for task, now in woken if task.id in seen
                ]
                peak, named = (int(n) for n in peaks.read_text().split())
                # The watchers' own two connections are not the waiters'.
                extra = max(0, peak - baseline - 2)
                out[how] = (latencies, stored, after_publish, extra, named)
    finally:
        purge(redis_url, redis_url, queue)
        admin.close()
        app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run; writes no results")
    parser.add_argument("--sends", type=int, help="sends per throughput run (default 1000)")
    options = parser.parse_args()
    seconds = 3.0 if options.quick else 10.0
    rounds = 2 if options.quick else 9
    latency_rounds = 1 if options.quick else 3
    # 200/s is the goal's load; 50/s shows the same comparison below saturation.
    send_rates = [SEND_RATE] if options.quick else [SEND_RATE, 50.0]
    sends = options.sends or (200 if options.quick else 1000)
    waiters = 50 if options.quick else 500

    with redis_server() as redis_url:
        print("1. endpoint latency …", flush=True)
        latency_runs = {
            rate: endpoint_latency(redis_url, seconds, rate, latency_rounds) for rate in send_rates
        }
        print("2. send throughput …", flush=True)
        rates = {"Redis": throughput(redis_url, redis_url, sends, rounds)}
        if amqp_reachable():
            rates["RabbitMQ"] = throughput(AMQP_URL, redis_url, sends, rounds)
        print("3. result latency …", flush=True)
        waits = result_latency(redis_url, waiters)

    rows: list[list[object]] = []
    labels: list[str] = []
    values: list[float] = []
    for rate, runs in latency_runs.items():
        # Per round: each mode's /cheap p99 over the idle server's p99 in the same round.
        idle = [percentile(probes, 99) for probes, _, _, _ in runs["idle"]]
        for mode in MODES:
            p99s = [percentile(probes, 99) for probes, _, _, _ in runs[mode]]
            ratios = [one / base for one, base in zip(p99s, idle, strict=True)]
            ratio = statistics.median(ratios)
            name = {
                "idle": "idle (no sends)",
                "send": "await loopsafe.celery.send",
                "delay": "task.delay() on the loop",
                "threadpool": "run_in_threadpool(task.delay)",
            }[mode]
            goal = ""
            if mode == "send" and rate == SEND_RATE:
                goal = f" (goal ≤ 2×: {'met' if ratio <= 2 else 'MISSED'})"
            sent = [latency for _, sends, _, _ in runs[mode] for latency in sends]
            failures: Counter[str] = sum((failed for _, _, failed, _ in runs[mode]), Counter())
            failed = ", ".join(f"{count} {reason}" for reason, count in failures.most_common())
            cold = ", ".join(
                f"{percentile(probes, 99) * 1000:.0f}" for _, _, _, probes in runs[mode]
            )
            detail = (
                f"/send p50 {percentile(sent, 50) * 1000:.0f} ms, p99 "
                f"{percentile(sent, 99) * 1000:.0f} ms; {len(sent)} ok"
                + (f"; failed: {failed}" if failed else "")
                if mode != "idle"
                else f"{sum(len(probes) for probes, _, _, _ in runs[mode])} probes"
            ) + f"; first {COLD_START:g} s (cold start, not counted): /cheap p99 {cold} ms"
            rows.append(
                [
                    f"1 · /cheap p99 under {rate:.0f} sends/s, broker +20 ms RTT",
                    name,
                    "p99 " + ", ".join(f"{one * 1000:.0f}" for one in p99s) + " ms (per round)",
                    f"median {ratio:.2f}× idle{goal}",
                    detail,
                ]
            )
            if mode != "idle":
                labels.append(f"1: {name}, {rate:.0f}/s (× idle p99)")
                values.append(ratio)
    for broker, (send_rate, delay_rate, ratio) in rates.items():
        verdict = "met" if ratio >= 0.8 else "MISSED"
        rows.append(
            [
                f"2 · sends/s from one loop, {broker}",
                "await send (≤ 64 in flight) vs .delay() from a thread",
                f"{send_rate:,.0f} vs {delay_rate:,.0f}",
                f"{ratio:.2f}× .delay() (goal ≥ 0.8×: {verdict})",
                f"{sends} sends per run; medians of {rounds} interleaved pairs",
            ]
        )
        labels.append(f"2: send / .delay(), {broker} (ratio)")
        values.append(ratio)
    for how, (latencies, stored, after_publish, extra, named) in waits.items():
        p50 = percentile(latencies, 50) * 1000
        goal = ""
        if how == "await result":
            goal = f" (goal ≤ 5 ms: {'met' if p50 <= 5 else 'MISSED'})"
        rows.append(
            [
                f"3 · wake-up after the task returned, {waiters} waiters on one loop",
                how,
                f"p50 {p50:.1f} ms{goal}",
                f"p99 {percentile(latencies, 99) * 1000:.1f} ms, max "
                f"{max(latencies) * 1000:.1f} ms",
                f"peak Redis connections: {extra} more than before the wait in all, "
                f"{named} of them the waiters' own",
            ]
        )
        rows.append(
            [
                f"3 · wake-up after the worker stored the outcome, {waiters} waiters",
                how,
                f"p50 {percentile(stored, 50) * 1000:.1f} ms",
                f"p99 {percentile(stored, 99) * 1000:.1f} ms",
                "from the result's date_done (the worker's Celery bookkeeping excluded)",
            ]
        )
        rows.append(
            [
                f"3 · wake-up after Redis published the outcome, {waiters} waiters",
                how,
                f"p50 {percentile(after_publish, 50) * 1000:.1f} ms",
                f"p99 {percentile(after_publish, 99) * 1000:.1f} ms",
                "from the PUBLISH as a separate subscriber process saw it: the waiters' side "
                f"alone ({len(after_publish)} of {len(latencies)} seen)",
            ]
        )
        labels.append(f"3: p50 ms, {how}")
        values.append(p50)
    if not amqp_reachable():
        rows.append(["2 · RabbitMQ", "skipped", "-", "-", f"no broker at {AMQP_URL}"])

    if options.quick:
        for row in rows:
            print(" | ".join(str(cell) for cell in row))
        return
    write_results(
        "celery_client",
        "Async Celery client: loop latency, send throughput, result latency",
        ["measurement", "how", "figure", "vs baseline", "detail"],
        rows,
        chart_labels=labels,
        chart_values=values,
        chart_xlabel="ratio (1, 2) or milliseconds (3)",
        notes=(
            "1: one uvicorn worker (asyncio loop); open-loop load (latency counted from each "
            "request's scheduled time) for 10 s after a 2 s cold start on the fresh server (its "
            "p99 in the detail column); a TCP proxy adds 10 ms each way between the API and "
            "Redis (the broker). Tasks are not consumed during this part. 2: no proxy. 3: a real "
            "worker (threads pool, concurrency 100); connections: the peak of Redis's CLIENT LIST "
            "during the wait minus before it (the worker's threads' own included; sampled, like "
            "the PUBLISH times, by a separate process whose connections are not counted), and "
            "how many of them result() opened (client name loopsafe-celery-results: one pub/sub "
            "+ at most 4 for reads)."
        ),
    )


if __name__ == "__main__":
    main()
