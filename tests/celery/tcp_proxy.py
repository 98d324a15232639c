"""A small TCP proxy on localhost that can add latency, cut every connection, or stall.

Stands between a client and a real broker: ``delay`` adds that many seconds to every chunk in each
direction (order kept, so a round trip costs ``2 × delay`` more); `cut()` drops every connection
mid-stream, as a broker restart does; ``stall`` accepts connections and never answers, as a broker
behind a dead network path does. Runs its own event loop in a daemon thread; `close()` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ("TcpProxy", "tcp_proxy")


class TcpProxy:
    """Forward 127.0.0.1:`port` to (`host`, `target_port`)."""

    def __init__(
        self, host: str, target_port: int, *, delay: float = 0.0, port: int | None = None
    ) -> None:
        self.host = host
        self.target_port = target_port
        self.delay = delay
        self.stall = False
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        if port is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
        self.port: int = port
        self.thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxy", daemon=True)
        self.thread.start()
        self.listen()

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def listen(self) -> None:
        """Accept connections (again, after `cut(stop_listening=True)`)."""

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

        self._call(start())

    def cut(self, *, stop_listening: bool = False) -> None:
        """Drop every open connection now; with `stop_listening`, refuse new ones too."""

        async def cut() -> None:
            if stop_listening and self.server is not None:
                self.server.close()
                await self.server.wait_closed()
                self.server = None
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()

        self._call(cut())

    def close(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if self.stall:
            with contextlib.suppress(Exception):
                await reader.read()  # until the client gives up
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, (writer, up_writer)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        # Chunks wait in a queue until their due time: latency is added without limiting
        # throughput (a pipelined stream is not slowed to one chunk per delay).
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sink.write(data)
                await sink.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while True:
                data = await source.read(65536)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await delivery
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            delivery.cancel()
            with contextlib.suppress(BaseException):
                await delivery
            for writer in pair:
                writer.transport.abort()
                self.writers.discard(writer)


@contextmanager
def tcp_proxy(host: str, port: int, *, delay: float = 0.0) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port, delay=delay)
    try:
        yield proxy
    finally:
        proxy.close()


def main() -> None:
    """``python -m tests.celery.tcp_proxy HOST PORT --port P --delay S``: run until SIGTERM.

    A proxy in its own process does not compete for the GIL with the process it measures.
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("host")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    options = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    proxy = TcpProxy(options.host, options.target_port, delay=options.delay, port=options.port)
    try:
        stop.wait()
    finally:
        proxy.close()


if __name__ == "__main__":
    main()
