"""The real-server harness: the suite's PostgreSQL and Redis answer, private servers restart."""

from __future__ import annotations

import socket

import asyncpg
import pytest
import redis.asyncio as aioredis

from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis


@pytest.mark.postgres
async def test_postgres_url_reaches_a_real_postgresql(postgres_url: str) -> None:
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval("SELECT 40 + 2") == 42
        assert "PostgreSQL" in await connection.fetchval("SELECT version()")
    finally:
        await connection.close()


@pytest.mark.redis
async def test_redis_url_reaches_a_real_redis(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
        assert (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()


@pytest.mark.redis
def test_a_private_redis_stops_and_restarts_on_the_same_port() -> None:
    with EmbeddedRedis() as server:
        port = server.port
        server.stop()
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), 1),
        ):
            pass
        server.start()
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16) == b"+PONG\r\n"
        server.kill()
        assert not server.running


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_private_postgres_restarts_and_keeps_its_data() -> None:
    with EmbeddedPostgres() as server:
        connection = await asyncpg.connect(server.url)
        await connection.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        await connection.close()
        server.restart()
        connection = await asyncpg.connect(server.url)
        try:
            assert await connection.fetchval("SELECT v FROM kept") == 7
        finally:
            await connection.close()


def test_embedded_redis_with_a_missing_binary_says_how_to_get_one() -> None:
    server = EmbeddedRedis(executable="/nonexistent/redis-server")
    with pytest.raises(FileNotFoundError):
        server.start()
    server.close()
