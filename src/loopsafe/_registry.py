"""LoopLocal: one instance per running event loop, created on first use, disposed when the loop ends.

Where the instances live: on the loop object itself (an attribute holding a `_LoopState`). That
makes the warm lookup one `getattr` and one dict lookup, it cannot confuse two loops (no `id(loop)`
keys: CPython reuses the ids of dead loops), and it cannot keep a dead loop alive: the state dies
with its loop. Loops that refuse attributes fall back to a `WeakKeyDictionary`.

How disposal finds the end of a loop without patching `loop.close`: the first instance created on a
loop arms a tiny async generator suspended at its first ``yield``. asyncio (and uvloop) track async
generators per loop and `shutdown_asyncgens()` — which `asyncio.run`, `asyncio.Runner`, `anyio.run`
and `run_async`'s own shutdown all call before closing — resumes it, so its ``finally`` block closes
every instance *inside* that loop. A loop closed any other way is collected with its state, whose
``__del__`` drops the instances without I/O and logs ``loopsafe.instance_abandoned``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import weakref
from asyncio.events import _get_running_loop
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, TypeVar, cast, overload

from . import _fork
from ._errors import LoopsafeError, NoRunningLoopError
from ._log import get_logger

__all__ = ("LoopLocal", "aclose_all", "describe_loop", "loop_local", "reset_after_fork", "stats")

T = TypeVar("T")

_log = get_logger("loopsafe.registry")

_STATE_ATTR = "_loopsafe_state"
#: How long one instance's `aclose` may take at loop end before it is given up and dropped.
DEFAULT_CLOSE_TIMEOUT = 10.0
#: Loop iterations granted to other async generators' ``finally`` blocks (which may still use our
#: resources) before disposal starts: `shutdown_asyncgens` closes them all concurrently.
_GRACE_ITERATIONS = 3

_lock = threading.Lock()
_states: weakref.WeakSet[_LoopState] = weakref.WeakSet()
_fallback_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
    weakref.WeakKeyDictionary()
)
_locals: weakref.WeakSet[LoopLocal[Any]] = weakref.WeakSet()


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
        # never closed: the loop ended without shutdown_asyncgens() or aclose_all().
        if self.instances and self.pid == os.getpid():
            for local, instance in _pop_all(self):
                local._abandon(instance, self.description)


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
        others = [other for other in _states if other is not state]
    _sweep_closed(others)
    return state


def _sweep_closed(states: list[_LoopState]) -> None:
    """Drop the instances of loops that were closed without disposal but are still referenced.

    Such a loop is not collected while something (often the resource itself) points at it, so
    waiting for the state's ``__del__`` would keep its sockets open; a new loop is a good moment.
    """
    for state in states:
        loop = state.loop_ref()
        if loop is not None and loop.is_closed() and state.instances:
            for local, instance in _pop_all(state):
                local._abandon(instance, state.description)


def describe_loop(loop: asyncio.AbstractEventLoop | None) -> str:
    """A short human description of `loop`: its type, address and the thread it ran in."""
    if loop is None:
        return f"no running loop (thread {threading.current_thread().name!r})"
    state = _state_of(loop)
    if state is not None:
        return state.description
    if loop is asyncio._get_running_loop():  # not seen by loopsafe yet, but it runs right here
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
    if state.finalizer is not None or getattr(loop, "_asyncgens_shutdown_called", False):
        # After shutdown_asyncgens() asyncio would warn about (and never close) a new generator;
        # instances made that late are closed by aclose_all() or dropped when the loop is collected.
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
            raise TypeError(f"LoopLocal factory must be callable, got {factory!r}")
        if close_timeout <= 0:
            raise ValueError(f"close_timeout must be > 0 seconds, got {close_timeout!r}")
        self._factory = factory
        self._aclose = aclose
        self._drop = drop
        self.name: str = name or getattr(factory, "__qualname__", None) or repr(factory)
        self.close_timeout = close_timeout
        self._counts = dict.fromkeys(
            ("loops", "created", "closed", "dropped", "abandoned", "failed"), 0
        )
        with _lock:
            _locals.add(self)

    def __repr__(self) -> str:
        return f"<LoopLocal {self.name!r} live={len(self)}>"

    def get(self) -> T:
        """Return the running loop's instance, creating it on first use.

        Raises `NoRunningLoopError` when called outside a running event loop.
        """
        loop = _get_running_loop()
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
                "loopsafe.celery.run_async(...) or asyncio.run(...)."
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
                self._counts["loops"] += 1
            self._counts["created"] += 1
            _arm_finalizer(loop, state)
        _log.debug("loopsafe.instance_created", registry=self.name, loop=state.description)
        return instance

    def peek(self) -> T | None:
        """Return the running loop's instance if it has one; never creates one. None outside a loop."""
        loop = _get_running_loop()
        if loop is None:
            return None
        _fork.check_pid()
        state = _state_of(loop)
        if state is None:
            return None
        return cast("T | None", state.instances.get(self))

    async def aclose(self) -> None:
        """Close the running loop's instance (if any) and forget it; the next `get()` makes a new one.

        Errors from the close function propagate (the instance is forgotten either way).
        """
        loop = asyncio.get_running_loop()
        state = _state_of(loop)
        if state is None:
            return
        with state.lock:
            if self not in state.instances:
                return
            instance = state.instances.pop(self)
        await self._close(instance, state.description, isolated=False)

    def clear(self) -> None:
        """Forget every loop's instance in this process without I/O, calling ``drop`` on each."""
        for state in _all_states():
            with state.lock:
                if self not in state.instances:
                    continue
                instance = state.instances.pop(self)
            self._drop_quietly(instance, state.description, event="loopsafe.instance_dropped")

    def __len__(self) -> int:
        """Live instances of this registry in this process."""
        return sum(1 for state in _all_states() if self in state.instances)

    async def _close(self, instance: T, where: str, *, isolated: bool) -> None:
        """Close one instance in the running loop; isolated closes log failures instead of raising."""
        try:
            if self._aclose is not None:
                closing: Awaitable[object] | None = self._aclose(instance)
            else:
                closing = _default_aclose(instance)
            if closing is not None:
                await _bounded(closing, self.close_timeout)
        except asyncio.CancelledError:
            self._drop_quietly(instance, where, event="loopsafe.instance_abandoned")
            raise
        except Exception as exc:
            self._counts["failed"] += 1
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
        self._counts["closed"] += 1
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
            self._counts["abandoned"] += 1
            _log.warning(
                event,
                registry=self.name,
                loop=where,
                hint="the loop ended without asyncio.run()/shutdown_asyncgens() or aclose_all()",
            )
        elif event is not None:
            self._counts["dropped"] += 1
            _log.debug(event, registry=self.name, loop=where)


# Per-thread record of factories being run, to turn factory recursion into a clear error.
_creating = threading.local()


def _creating_on_this_thread() -> set[LoopLocal[Any]]:
    active: set[LoopLocal[Any]] | None = getattr(_creating, "active", None)
    if active is None:
        active = _creating.active = set()
    return active


class _CloseTimeoutError(TimeoutError):
    pass


async def _bounded(closing: Awaitable[object], timeout: float) -> None:
    """Await `closing` for at most `timeout` seconds, even if it ignores cancellation."""
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task in done:
        task.result()
        return
    task.cancel()
    # A close function that swallows cancellation must not hold the loop's shutdown hostage:
    # give it one more short moment, then move on (the loop will report the task if it lingers).
    await asyncio.wait({task}, timeout=min(timeout, 1.0))
    raise _CloseTimeoutError(f"did not finish within {timeout:g} s")


def _all_states() -> list[_LoopState]:
    _fork.check_pid()
    with _lock:
        states = list(_states)
    _sweep_closed(states)
    return states


@overload
def loop_local(factory: Callable[[], T], /) -> LoopLocal[T]: ...


@overload
def loop_local(
    factory: None = None,
    /,
    *,
    aclose: Callable[[T], Awaitable[object]] | None = None,
    drop: Callable[[T], object] | None = None,
    name: str | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> Callable[[Callable[[], T]], LoopLocal[T]]: ...


def loop_local(
    factory: Callable[[], T] | None = None,
    /,
    *,
    aclose: Callable[[T], Awaitable[object]] | None = None,
    drop: Callable[[T], object] | None = None,
    name: str | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> LoopLocal[T] | Callable[[Callable[[], T]], LoopLocal[T]]:
    """Decorate a zero-argument factory into a `LoopLocal`; calling the result returns `get()`.

    Usable bare (``@loop_local``) or with options (``@loop_local(aclose=..., name=...)``).

    .. versionadded:: 0.1.0
    """

    def decorate(function: Callable[[], T]) -> LoopLocal[T]:
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
    _log.info("loopsafe.fork_reset", pid=os.getpid(), dropped=dropped)


def _reinit_after_fork() -> None:
    global _lock, _creating
    # Another parent thread may have held the lock when the process forked.
    _lock = threading.Lock()
    _creating = threading.local()
    reset_after_fork()


_fork.on_fork_in_child(_reinit_after_fork)


def stats() -> list[dict[str, Any]]:
    """One row per live registry: name, live instances, and lifetime counters.

    ``loops`` counts the distinct event loops the registry has served an instance to.

    Keys: ``name``, ``live``, ``loops``, ``created``, ``closed``, ``dropped``, ``abandoned``,
    ``failed``.

    .. versionadded:: 0.1.0
    """
    with _lock:
        locals_ = list(_locals)
    rows = [{"name": local.name, "live": len(local), **local._counts} for local in locals_]
    rows.sort(key=lambda row: str(row["name"]))
    return rows
