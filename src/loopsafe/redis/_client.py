"""Per-loop `redis.asyncio.Redis` clients built from one process-wide configuration."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .. import _idle
from .._errors import BoundExceededError, ConfigurationError, ConfigurationTypeError
from .._log import get_logger, redact_dsn
from .._owner import LoopOwner
from .._quota import ConnectionQuota
from .._registry import LoopLocal
from ._deadline import Deadlines
from ._redis_compat import close_socket_now
from ._release import release_without_io

__all__ = (
    "DEFAULT_URL",
    "LoopClients",
    "configure",
    "get_redis",
    "loop_clients",
)

#: Used when neither `configure(url)` nor ``$REDIS_URL`` says where Redis is (redis-py's default).
DEFAULT_URL = "redis://localhost:6379/0"
_SCHEMES = ("redis://", "rediss://", "unix://")

_log = get_logger("loopsafe.redis")

#: The Redis connections that `run_async`'s per-thread loops of one process hold together, unless
#: `configure()` gets ``max_connections`` (then that many): as many as one SQLAlchemy pool (5 +
#: 10). Each loop has its own client and pool, so a thread per request held one connection per
#: live thread (up to 19 at 20 concurrent requests, issue #24).
PER_THREAD_LOOPS_LIMIT = 15
#: Seconds a command on a per-thread loop waits for a connection that other loops hold.
CONNECTION_WAIT = 30.0


def _default_options() -> dict[str, Any]:
    # redis-py's own default retries a refused connection ten times with up to 1 s between tries,
    # so with Redis down every publish() would sit out its whole timeout before reporting. Three
    # quick retries still ride out a dropped pooled connection (server restart, idle cut-off).
    return {"retry": Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.5), 3)}


@dataclass(frozen=True)
class _Settings:
    url: str
    options: Mapping[str, Any]
    version: int


_settings: _Settings | None = None
_settings_lock = threading.Lock()
_version = 0


def configure(url: str | None = None, **client_options: Any) -> None:
    """Set where and how every loop's Redis client connects; takes effect on the next `get_redis()`.

    `url` defaults to ``$REDIS_URL`` (then ``redis://localhost:6379/0``); ``redis://``,
    ``rediss://`` (TLS) and ``unix://`` URLs are accepted. `client_options` are keyword arguments
    of `redis.asyncio.Redis` / its connection pool (``decode_responses``, ``max_connections``,
    ``socket_timeout``, ``retry``, ``health_check_interval``, ``ssl_ca_certs``, …); loopsafe
    changes one redis-py default: ``retry`` gives up after three quick retries. Nothing connects
    here, but the URL and options are checked now, so a typo fails at start-up instead of on the
    first publish.

    The per-thread loops of `loopsafe.run_async` share one limit of ``max_connections``
    connections (`PER_THREAD_LOOPS_LIMIT` without it) across the process: a command waits up to
    `CONNECTION_WAIT` seconds for one that another thread's loop gives back (an idle one is
    closed for it), then raises ``redis.exceptions.ConnectionError``. Other loops' clients keep
    redis-py's per-client ``max_connections``.

    Clients that loops already made keep working with the old settings until their loop ends.

    Raises `ConfigurationTypeError` (a `TypeError`) for an option Redis does not accept and
    `ConfigurationError` (a `ValueError`) for a bad URL.

    .. versionadded:: 0.1.0
    """
    global _settings, _version
    resolved = _resolve_url(url)
    options = {**_default_options(), **client_options}
    _validate(resolved, options)
    _quota.limit = options.get("max_connections") or PER_THREAD_LOOPS_LIMIT
    with _settings_lock:
        _version += 1
        _settings = _Settings(resolved, MappingProxyType(options), _version)
    _log.info("loopsafe.redis_configured", url=redact_dsn(resolved))


def _resolve_url(url: str | None) -> str:
    if url is None:
        url = os.environ.get("REDIS_URL") or DEFAULT_URL
    if not isinstance(url, str):
        raise ConfigurationTypeError(
            f"Redis URL must be a string such as 'redis://host:6379/0', got {url!r}"
        )
    if not url.startswith(_SCHEMES):
        raise ConfigurationError(
            f"Unsupported Redis URL {redact_dsn(url)!r}: use redis://host:port/db, "
            "rediss://host:port/db (TLS) or unix:///path/to/redis.sock?db=0"
        )
    return url


def _validate(url: str, options: Mapping[str, Any]) -> None:
    """Build (without connecting) a pool and one connection, so bad settings fail right away."""
    try:
        pool = _OwnedPool.from_url(url, **options)
        # Connection classes take their options only here; an unknown keyword fails now.
        pool.make_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    except TypeError as exc:
        raise ConfigurationTypeError(
            f"loopsafe.redis.configure() got an option Redis does not accept ({exc}). Pass only "
            "keyword arguments of redis.asyncio.Redis / ConnectionPool."
        ) from exc
    except ValueError as exc:
        raise ConfigurationError(
            f"Invalid Redis URL or option for {redact_dsn(url)!r}: {exc}"
        ) from exc


def _current_settings() -> _Settings:
    if _settings is None:
        configure()
    assert _settings is not None
    return _settings


class _OwnedPool(ConnectionPool):
    """A connection pool that knows its event loop and process, and refuses to serve any other.

    redis-py's own failures for a client used on a second loop are "attached to a different loop",
    "Event loop is closed" or a hang; this turns them into a `WrongLoopError` that says what to do.
    """

    _loopsafe_owner: LoopOwner | None = None
    # The process-wide limit of per-thread loops, the slots this pool holds of it (one per
    # connection it made), and its commands between taking a slot and their connection.
    _loopsafe_quota: ConnectionQuota | None = None
    _loopsafe_slots = 0
    _loopsafe_getting = 0
    _loopsafe_pid = 0

    def bind(self, loop: asyncio.AbstractEventLoop, quota: ConnectionQuota | None = None) -> None:
        if quota is not None:
            self._loopsafe_quota = quota
            self._loopsafe_pid = os.getpid()
            _limited_pools.add(self)
        self._loopsafe_owner = LoopOwner(
            loop,
            what="This Redis client from loopsafe.redis.get_redis()",
            fix=(
                "Call get_redis() where you use the client (it returns the running loop's own "
                "client) instead of keeping one in a variable, attribute or closure that outlives "
                "its loop."
            ),
        )

    def get_available_connection(self) -> AbstractConnection:
        # Every checkout (commands, pipelines, pub/sub) passes here; a plain method rather than
        # an override of the async get_connection() keeps the check off the await chain.
        owner = self._loopsafe_owner
        if owner is not None:
            owner.check()
        connection: AbstractConnection = super().get_available_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        return connection

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        quota = self._loopsafe_quota
        if quota is None:
            return await self._get_connection(*args, **kwargs)
        if not self._available_connections:  # it will make one: a slot first
            try:
                await quota.acquire(CONNECTION_WAIT)
            except BoundExceededError:
                raise RedisConnectionError(
                    f"loopsafe.redis: no connection became free within {CONNECTION_WAIT:g} s: "
                    f"the per-thread run_async loops of this process hold all {quota.limit} "
                    "they may share. Hold fewer at once (a subscription holds one), or raise "
                    "the limit with loopsafe.redis.configure(max_connections=...)."
                ) from None
            self._loopsafe_slots += 1
        self._loopsafe_getting += 1
        try:
            return await self._get_connection(*args, **kwargs)
        finally:
            self._loopsafe_getting -= 1
            # A slot taken for a connection another command gave back meanwhile goes back.
            made = len(self._available_connections) + len(self._in_use_connections)
            while self._loopsafe_slots > made + self._loopsafe_getting:
                self._loopsafe_slots -= 1
                quota.release()

    async def _get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]  # unannotated in redis-py
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)
        quota = self._loopsafe_quota
        if quota is not None and quota.waiting:
            await self.shed_idle()  # another thread's loop waits: not later, see loopsafe._idle

    async def shed_idle(self) -> None:
        """Close one idle connection and give its slot to a loop that waits (on this loop)."""
        quota = self._loopsafe_quota
        if quota is None or not self._available_connections or self._loopsafe_slots == 0:
            return
        connection = self._available_connections.pop(0)
        try:
            await connection.disconnect()
        except Exception:  # closed without a goodbye: the slot is free all the same
            close_socket_now(connection)
        finally:
            self._loopsafe_slots -= 1
            quota.release()

    def give_back_slots(self) -> None:
        """The pool is closed: its slots go back (not in a forked child: the parent's)."""
        quota = self._loopsafe_quota
        if quota is None or self._loopsafe_pid != os.getpid():
            return
        while self._loopsafe_slots > 0:
            self._loopsafe_slots -= 1
            quota.release()


def _relieve_pressure() -> None:
    """A per-thread loop waits for a slot: have an idle loop close one of its idle connections."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    for pool in list(_limited_pools):
        owner = pool._loopsafe_owner
        loop = owner.loop_ref() if owner is not None else None
        if loop is None or loop is here or loop.is_closed() or not pool._available_connections:
            continue
        # False: a call runs that loop, and its next release sheds (see _OwnedPool.release).
        if _idle.run_while_idle(loop, pool.shed_idle):
            return


_quota = ConnectionQuota(PER_THREAD_LOOPS_LIMIT, on_pressure=_relieve_pressure)
_limited_pools: weakref.WeakSet[_OwnedPool] = weakref.WeakSet()


class LoopClients:
    """The Redis clients one event loop has made, closed together when the loop ends.

    ``current`` follows the latest `configure()`; clients made before it stay open (someone may
    still use them) until the loop ends.
    """

    __slots__ = ("clients", "closed", "current", "deadlines", "version")

    def __init__(self) -> None:
        self.clients: list[Redis] = []
        self.current: Redis | None = None
        self.version = -1
        self.closed = False
        self.deadlines = Deadlines()

    def client(self) -> Redis:
        """The client for the current settings, made on first use."""
        settings = _settings or _current_settings()
        current = self.current
        if current is not None and self.version == settings.version:
            return current
        return self.make(settings)

    def make(self, settings: _Settings) -> Redis:
        pool = _OwnedPool.from_url(settings.url, **settings.options)
        loop = asyncio.get_running_loop()
        pool.bind(loop, _quota if _idle.owned(loop) else None)
        client = Redis.from_pool(pool)
        self.clients.append(client)
        self.current = client
        self.version = settings.version
        _log.debug("loopsafe.redis_client_created", url=redact_dsn(settings.url))
        return client


async def _aclose_clients(holder: LoopClients) -> None:
    holder.closed = True
    failure: Exception | None = None
    for client in reversed(holder.clients):
        try:
            await client.aclose()
        except Exception as exc:  # one bad client must not keep the others open
            release_without_io(client)
            failure = failure or exc
        finally:
            _give_back_slots(client)
    holder.clients.clear()
    holder.current = None
    if failure is not None:
        raise failure


def _drop_clients(holder: LoopClients) -> None:
    holder.closed = True
    for client in holder.clients:
        release_without_io(client)
        _give_back_slots(client)
    holder.clients.clear()
    holder.current = None


def _give_back_slots(client: Redis) -> None:
    pool = client.connection_pool
    if isinstance(pool, _OwnedPool):
        pool.give_back_slots()


_loop_clients: LoopLocal[LoopClients] = LoopLocal(
    LoopClients, aclose=_aclose_clients, drop=_drop_clients, name="loopsafe.redis"
)


def loop_clients() -> LoopClients:
    """The running loop's `LoopClients` (made on first use).

    Raises `NoRunningLoopError` outside a running event loop.
    """
    return _loop_clients.get()


def get_redis() -> Redis:
    """Return the running loop's `redis.asyncio.Redis` client, creating it on first use.

    Each event loop (thread, `asyncio.run` call, test) gets its own client and connection pool,
    closed inside that loop when it ends; in a forked child inherited clients are dropped without
    a byte sent, and the child gets fresh ones. Do not keep the result beyond the current loop:
    call `get_redis()` where you need it (it is cheap). A client used on another loop raises
    `WrongLoopError`.

    Raises `NoRunningLoopError` outside a running event loop.

    .. versionadded:: 0.1.0
    """
    return loop_clients().client()
