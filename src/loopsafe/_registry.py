"""LoopLocal: one instance per running event loop, created on first use, disposed when the loop ends.

Where the instances live: on the loop object itself (an attribute holding a `_LoopState`). That
makes the warm lookup one `getattr` and one dict lookup, it cannot confuse two loops (no `id(loop)`
keys: CPython reuses the ids of dead loops), and it cannot keep a dead loop alive: the state dies
with its loop. Loops that refuse attributes fall back to a `WeakKeyDictionary`.

How disposal finds the end of a loop without patching `loop.close`: the first instance created on a
loop arms a tiny async generator suspended at its first ``yield``. asyncio (and uvloop) track async
generators per loop and `shutdown_asyncgens()` — which `asyncio.run`, `asyncio.Runner`, `anyio.run`
and `run_async`'s own shutdown all call before closing — resumes it, so its ``finally`` block closes
every instance *inside* that loop.

A loop closed any other way leaves its instances behind; they are dropped without I/O (and
``loopsafe.instance_abandoned`` is logged) at well-defined moments only: when a new loop is
attached, or at interpreter exit. A loop that is garbage collected first hands them over from its
state's ``__del__``, which runs no user code (it may run in any thread, inside any lock). Reads
(`len()`, `stats()`) never drop anything.

Fork: the at-fork hook forgets everything in the child. A fork that skips it (a C extension calling
fork() directly) is caught by the process id check on every path but one: `get()` on a loop whose
instance is already cached, which stays one attribute read and one dict lookup (a pid check is a
system call that would triple it). So a child forked without the hook that runs the *inherited*
loop object before anything else, and calls `get()` first, is served the parent's instance; such a
child must call `reset_after_fork()`. Loop-end disposal checks the pid, so the parent's
connections are never closed from the child.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import inspect
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, Protocol, TypedDict, TypeVar, cast, overload

from . import _fork, _validate
from ._asyncio_compat import asyncgens_shut_down, get_running_loop_or_none
from ._bound import DEFAULT_GRACE, await_bounded
from ._errors import ConfigurationTypeError, LoopsafeError, NoRunningLoopError
from ._log import get_logger

__all__ = (
    "LoopLocal",
    "RegistryStats",
    "aclose_all",
    "collect_abandoned",
    "describe_loop",
    "loop_local",
    "reset_after_fork",
    "stats",
)

T = TypeVar("T")
U = TypeVar("U")

_log = get_logger("loopsafe.registry")

_STATE_ATTR = "_loopsafe_state"
#: How long one instance's `aclose` may take at loop end before it is given up and dropped.
DEFAULT_CLOSE_TIMEOUT = 10.0
#: Loop iterations granted to other async generators' ``finally`` blocks (which may still use our
#: resources) before disposal starts: `shutdown_asyncgens` closes them all concurrently.
_GRACE_ITERATIONS = 3
#: Lifetime counters of each registry, as `stats()` reports them.
_COUNTERS = ("loops", "created", "closed", "dropped", "abandoned", "failed")

_lock = threading.Lock()
_states: weakref.WeakSet[_LoopState] = weakref.WeakSet()
_fallback_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
    weakref.WeakKeyDictionary()
)
_locals: weakref.WeakSet[LoopLocal[Any]] = weakref.WeakSet()
# What collected loops left behind: (loop description, owning pid, instances newest first). A deque
# because `_LoopState.__del__` appends from garbage collection, where taking a lock could deadlock.
_abandoned: collections.deque[tuple[str, int, list[tuple[LoopLocal[Any], Any]]]] = (
    collections.deque()
)


class _LoopState:
    """Everything loopsafe keeps for one loop: its instances (in creation order) and its finalizer."""

    __slots__ = (
        "__weakref__",
        "description",
        "finalizer",
        "instances",
        "lock",
        "loop_ref",
        "pid",
        "seen",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.description = (
            f"{type(loop).__name__} 0x{id(loop):x} in thread {threading.current_thread().name!r}"
        )
        self.pid = os.getpid()
        self.loop_ref = weakref.ref(loop)
        self.instances: dict[LoopLocal[Any], Any] = {}
        self.seen: weakref.WeakSet[LoopLocal[Any]] = weakref.WeakSet()
        # Re-entrant so a factory's own (forbidden) recursion reaches the clear error below
        # instead of deadlocking.
        self.lock = threading.RLock()
        self.finalizer: AsyncGenerator[None, None] | None = None

    def __del__(self) -> None:
        # Runs when the loop that owned this state is garbage collected. Anything still here was
        # never closed: the loop ended without shutdown_asyncgens() or aclose_all(). No user code
        # and no lock here: hand the instances to the next collection point.
        if self.instances:
            items = list(self.instances.items())
            self.instances.clear()
            items.reverse()
            _abandoned.append((self.description, self.pid, items))


def _pop_all(state: _LoopState) -> list[tuple[LoopLocal[Any], Any]]:
    """Take every instance out of `state`, newest first (dependents before what they depend on)."""
    with state.lock:
        items = list(state.instances.items())
        state.instances.clear()
    items.reverse()
    return items


def _state_of(loop: asyncio.AbstractEventLoop) -> _LoopState | None:
    state = getattr(loop, _STATE_ATTR, None)
    if state is None:
        state = _fallback_states.get(loop)
    return cast("_LoopState | None", state)


def _attach_state(loop: asyncio.AbstractEventLoop) -> _LoopState:
    with _lock:
        state = _state_of(loop)
        if state is not None:
            return state
        state = _LoopState(loop)
        try:
            setattr(loop, _STATE_ATTR, state)
        except AttributeError:  # a loop class with __slots__
            _fallback_states[loop] = state
        _states.add(state)
    collect_abandoned()
    return state


def collect_abandoned() -> int:
    """Drop, without I/O, what loops that ended without disposal left behind; returns how many.

    Covers loops that were garbage collected and loops that are closed but still referenced (often
    by the resource itself, so they would never be collected). Runs when a new loop is attached and
    at interpreter exit; the pytest plugin runs it after each test.
    """
    dropped = 0
    while _abandoned:
        try:
            where, pid, items = _abandoned.popleft()
        except IndexError:  # another thread took the last one
            break
        for local, instance in items:
            if pid == os.getpid():
                local._abandon(instance, where)
            else:  # inherited through a fork that skipped the hook: the parent's, not abandoned
                local._drop_quietly(instance, where, event="loopsafe.instance_dropped")
            dropped += 1
    with _lock:
        states = list(_states)
    for state in states:
        loop = state.loop_ref()
        if loop is not None and loop.is_closed() and state.instances:
            for local, instance in _pop_all(state):
                local._abandon(instance, state.description)
                dropped += 1
    return dropped


atexit.register(collect_abandoned)


def describe_loop(loop: asyncio.AbstractEventLoop | None) -> str:
    """A short human description of `loop`: its type, address and the thread it ran in."""
    if loop is None:
        return f"no running loop (thread {threading.current_thread().name!r})"
    state = _state_of(loop)
    if state is not None:
        return state.description
    if loop is get_running_loop_or_none():  # not seen by loopsafe yet, but it runs right here
        return f"{type(loop).__name__} 0x{id(loop):x} in thread {threading.current_thread().name!r}"
    return f"{type(loop).__name__} 0x{id(loop):x}"


async def _finalizer(state: _LoopState) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        state.finalizer = None
        for _ in range(_GRACE_ITERATIONS):
            await asyncio.sleep(0)
        await _dispose(state)


def _arm_finalizer(loop: asyncio.AbstractEventLoop, state: _LoopState) -> None:
    """Start the state's finalizer generator so the loop's shutdown_asyncgens() will resume it."""
    if state.finalizer is not None or asyncgens_shut_down(loop):
        # After shutdown_asyncgens() asyncio would warn about (and never close) a new generator;
        # instances made that late are closed by aclose_all() or dropped at a collection point.
        return
    finalizer = _finalizer(state)
    step = finalizer.__anext__()
    try:
        # Runs the body up to its first yield synchronously; the loop's first-iteration hook has
        # registered the generator with this loop by now.
        step.send(None)
    except StopIteration:
        state.finalizer = finalizer
    else:  # pragma: no cover - the body cannot suspend before its yield
        raise AssertionError("loopsafe finalizer suspended before its first yield")


async def _dispose(state: _LoopState) -> None:
    """Close every instance of this loop, newest first, each isolated and bounded in time."""
    # A child forked without the at-fork hook may run the parent's loop to its end: its instances
    # hold the parent's sockets and must be dropped, never closed.
    _fork.check_pid()
    while True:
        items = _pop_all(state)
        if not items:
            return
        for index, (local, instance) in enumerate(items):
            try:
                await local._close(instance, state.description, isolated=True)
            except asyncio.CancelledError:
                # Disposal itself was cancelled: nothing may be left holding sockets, so drop the
                # rest without I/O before letting the cancellation through.
                for rest_local, rest in items[index + 1 :]:
                    rest_local._abandon(rest, state.description)
                raise


def _default_aclose(instance: object) -> Awaitable[object] | None:
    """Close `instance` through its own ``aclose()`` or ``close()``, if it has one."""
    for method_name in ("aclose", "close"):
        method = getattr(instance, method_name, None)
        if callable(method):
            result = method()
            return cast("Awaitable[object]", result) if inspect.isawaitable(result) else None
    return None


class LoopLocal(Generic[T]):
    """Holds one instance of a resource per running event loop.

    ``factory`` makes the instance the first time `get()` is called on a loop (at most once per
    loop). ``aclose`` closes it inside its loop when the loop ends (default: the instance's own
    ``aclose()``/``close()``); ``drop`` releases it without I/O where closing is impossible or
    unsafe (a forked child, a loop closed without shutdown). Instances are never shared between
    loops, threads or processes.

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_aclose",
        "_counts",
        "_counts_lock",
        "_drop",
        "_factory",
        "close_timeout",
        "name",
    )

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        aclose: Callable[[T], Awaitable[object]] | None = None,
        drop: Callable[[T], object] | None = None,
        name: str | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        if not callable(factory):
            raise ConfigurationTypeError(f"LoopLocal factory must be callable, got {factory!r}")
        self.close_timeout = _validate.seconds("close_timeout", close_timeout)
        self._factory = factory
        self._aclose = aclose
        self._drop = drop
        self.name: str = name or getattr(factory, "__qualname__", None) or repr(factory)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        # Counters change in whichever thread runs a loop's disposal or a collection.
        self._counts_lock = threading.Lock()
        with _lock:
            _locals.add(self)

    def __repr__(self) -> str:
        return f"<LoopLocal {self.name!r} live={len(self)}>"

    def get(self) -> T:
        """Return the running loop's instance, creating it on first use.

        Raises `NoRunningLoopError` when called outside a running event loop.
        """
        loop = get_running_loop_or_none()
        if loop is not None:
            state = getattr(loop, _STATE_ATTR, None)
            if state is not None:
                try:
                    return cast("T", state.instances[self])
                except KeyError:
                    pass
        return self._get_slow(loop)

    __call__ = get

    def _get_slow(self, loop: asyncio.AbstractEventLoop | None) -> T:
        if loop is None:
            raise NoRunningLoopError(
                f"LoopLocal {self.name!r} was used in thread "
                f"{threading.current_thread().name!r}, where no event loop is running. Call it "
                "from async code (inside a coroutine), or run that coroutine with "
                "loopsafe.run_async(...) or asyncio.run(...)."
            )
        _fork.check_pid()
        state = _attach_state(loop)
        with state.lock:
            if self in state.instances:
                return cast("T", state.instances[self])
            creating = _creating_on_this_thread()
            if self in creating:
                raise LoopsafeError(
                    f"The factory of LoopLocal {self.name!r} called {self.name!r}.get() on the same "
                    "loop: a factory cannot depend on its own instance."
                )
            creating.add(self)
            try:
                instance = self._factory()
            finally:
                creating.discard(self)
            state.instances[self] = instance
            if self not in state.seen:
                state.seen.add(self)
                self._count("loops")
            self._count("created")
            _arm_finalizer(loop, state)
        _log.debug("loopsafe.instance_created", registry=self.name, loop=state.description)
        return instance

    def peek(self) -> T | None:
        """Return the running loop's instance if it has one; never creates one. None outside a loop."""
        loop = get_running_loop_or_none()
        if loop is None:
            return None
        state = _state_of(loop)
        if state is None or state.pid != os.getpid():  # a parent's, through a hookless fork
            return None
        return cast("T | None", state.instances.get(self))

    async def aclose(self) -> None:
        """Close the running loop's instance (if any) and forget it; the next `get()` makes a new one.

        Errors from the close function propagate (the instance is forgotten either way).
        """
        loop = asyncio.get_running_loop()
        _fork.check_pid()
        state = _state_of(loop)
        if state is None:
            return
        with state.lock:
            if self not in state.instances:
                return
            instance = state.instances.pop(self)
        await self._close(instance, state.description, isolated=False)

    def clear(self) -> None:
        """Forget every loop's instance in this process without I/O, calling ``drop`` on each.

        Touches this registry only.
        """
        for state in _all_states():
            with state.lock:
                if self not in state.instances:
                    continue
                instance = state.instances.pop(self)
            self._drop_quietly(instance, state.description, event="loopsafe.instance_dropped")

    def __len__(self) -> int:
        """Instances of this registry on this process's open loops (a pure read: drops nothing).

        An instance whose loop was closed without disposal no longer counts, though it is dropped
        only at the next collection point (see `collect_abandoned`).
        """
        pid = os.getpid()
        return sum(
            1
            for state in _all_states()
            if state.pid == pid and _is_open(state) and self in state.instances
        )

    def _count(self, counter: str) -> None:
        with self._counts_lock:
            self._counts[counter] += 1

    async def _close(self, instance: T, where: str, *, isolated: bool) -> None:
        """Close one instance in the running loop; isolated closes log failures instead of raising."""
        try:
            if self._aclose is not None:
                closing: Awaitable[object] | None = self._aclose(instance)
            else:
                closing = _default_aclose(instance)
            if closing is not None:
                timeout = self.close_timeout
                await await_bounded(closing, timeout, grace=min(timeout, DEFAULT_GRACE))
        except asyncio.CancelledError:
            self._drop_quietly(instance, where, event="loopsafe.instance_abandoned")
            raise
        except Exception as exc:
            self._count("failed")
            _log.warning(
                "loopsafe.instance_close_failed",
                registry=self.name,
                loop=where,
                error=f"{type(exc).__name__}: {exc}",
            )
            self._drop_quietly(instance, where, event=None)
            if not isolated:
                raise
            return
        self._count("closed")
        _log.debug("loopsafe.instance_closed", registry=self.name, loop=where)

    def _abandon(self, instance: T, where: str) -> None:
        self._drop_quietly(instance, where, event="loopsafe.instance_abandoned")

    def _drop_quietly(self, instance: T, where: str, *, event: str | None) -> None:
        """Release `instance` without I/O; a failing ``drop`` is logged, never raised."""
        try:
            if self._drop is not None:
                self._drop(instance)
        except Exception as exc:
            _log.warning(
                "loopsafe.instance_drop_failed",
                registry=self.name,
                loop=where,
                error=f"{type(exc).__name__}: {exc}",
            )
        if event == "loopsafe.instance_abandoned":
            self._count("abandoned")
            _log.warning(
                event,
                registry=self.name,
                loop=where,
                hint="the loop ended without asyncio.run()/shutdown_asyncgens() or aclose_all()",
            )
        elif event is not None:
            self._count("dropped")
            _log.debug(event, registry=self.name, loop=where)


# Per-thread record of factories being run, to turn factory recursion into a clear error.
_creating = threading.local()


def _creating_on_this_thread() -> set[LoopLocal[Any]]:
    active: set[LoopLocal[Any]] | None = getattr(_creating, "active", None)
    if active is None:
        active = _creating.active = set()
    return active


def _is_open(state: _LoopState) -> bool:
    loop = state.loop_ref()
    return loop is not None and not loop.is_closed()


def _all_states() -> list[_LoopState]:
    with _lock:
        return list(_states)


class _LoopLocalDecorator(Protocol):
    """What ``loop_local(...)`` with options returns: keeps the decorated factory's type."""

    def __call__(self, factory: Callable[[], T], /) -> LoopLocal[T]: ...


@overload
def loop_local(factory: Callable[[], T], /) -> LoopLocal[T]: ...


# The callbacks take Any here: binding T from them would type the result by the callback's
# parameter (`drop=list[object].append` made every such registry a LoopLocal[object]).
@overload
def loop_local(
    factory: None = None,
    /,
    *,
    aclose: Callable[[Any], Awaitable[object]] | None = None,
    drop: Callable[[Any], object] | None = None,
    name: str | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> _LoopLocalDecorator: ...


def loop_local(
    factory: Callable[[], T] | None = None,
    /,
    *,
    aclose: Callable[[Any], Awaitable[object]] | None = None,
    drop: Callable[[Any], object] | None = None,
    name: str | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> LoopLocal[T] | _LoopLocalDecorator:
    """Decorate a zero-argument factory into a `LoopLocal`; calling the result returns `get()`.

    Usable bare (``@loop_local``) or with options (``@loop_local(aclose=..., name=...)``).

    .. versionadded:: 0.1.0
    """

    # Checked now, so a bad option fails where it is written rather than where it is applied.
    _validate.seconds("close_timeout", close_timeout)

    def decorate(function: Callable[[], U]) -> LoopLocal[U]:
        return LoopLocal(function, aclose=aclose, drop=drop, name=name, close_timeout=close_timeout)

    if factory is not None:
        return decorate(factory)
    return decorate


async def aclose_all() -> None:
    """Close every registry's instance for the running loop, newest first, inside this loop.

    Failures and timeouts of single instances are logged (``loopsafe.instance_close_failed``) and
    never stop the others.

    .. versionadded:: 0.1.0
    """
    _fork.check_pid()
    state = _state_of(asyncio.get_running_loop())
    if state is not None:
        await _dispose(state)


def reset_after_fork() -> None:
    """Forget every instance this process holds, without I/O (``drop`` is called on each).

    Runs automatically in a forked child; call it yourself where a framework forks behind
    loopsafe's back.

    .. versionadded:: 0.1.0
    """
    dropped = 0
    with _lock:
        states = list(_states)
    for state in states:
        # Replace the per-loop lock too: a parent thread may have held it at fork time.
        state.lock = threading.RLock()
        for local, instance in _pop_all(state):
            local._drop_quietly(instance, state.description, event="loopsafe.instance_dropped")
            dropped += 1
        state.pid = os.getpid()
    dropped += collect_abandoned()
    _log.info("loopsafe.fork_reset", pid=os.getpid(), dropped=dropped)


def _reinit_after_fork() -> None:
    global _lock, _creating
    # Another parent thread may have held the lock when the process forked.
    _lock = threading.Lock()
    _creating = threading.local()
    for local in list(_locals):
        local._counts_lock = threading.Lock()
    reset_after_fork()


_fork.on_fork_in_child(_reinit_after_fork)


class RegistryStats(TypedDict):
    """One row of `stats()`: a registry's name, its live instances, and its lifetime counters."""

    name: str
    live: int
    loops: int
    created: int
    closed: int
    dropped: int
    abandoned: int
    failed: int


def stats() -> list[RegistryStats]:
    """One row per live registry: name, live instances, and lifetime counters.

    ``loops`` counts the distinct event loops the registry has served an instance to. A pure
    read: it drops nothing (see `LoopLocal` for when abandoned instances are collected).

    Keys: ``name``, ``live``, ``loops``, ``created``, ``closed``, ``dropped``, ``abandoned``,
    ``failed``.

    .. versionadded:: 0.1.0
    """
    with _lock:
        locals_ = list(_locals)
    rows: list[RegistryStats] = []
    for local in locals_:
        with local._counts_lock:
            counts = dict(local._counts)
        rows.append(
            RegistryStats(
                name=local.name,
                live=len(local),
                loops=counts["loops"],
                created=counts["created"],
                closed=counts["closed"],
                dropped=counts["dropped"],
                abandoned=counts["abandoned"],
                failed=counts["failed"],
            )
        )
    rows.sort(key=lambda row: row["name"])
    return rows
