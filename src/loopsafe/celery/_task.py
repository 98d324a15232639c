"""async_task: turn an `async def` into an ordinary Celery task that runs through run_async."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
)

from .._bridge._run_async import run_async
from .._validate import seconds

if TYPE_CHECKING:
    import celery

__all__ = ("AsyncTask", "async_task")

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class AsyncTask(Protocol[P, R_co]):
    """What `async_task` returns: a Celery task whose call signature is the coroutine's.

    Calling it runs the task body synchronously (through `run_async`); ``delay``/``apply_async``
    send it to a worker; ``await task.coroutine(...)`` runs the ``async def`` itself on the
    caller's loop. All other Celery ``Task`` attributes are there too.
    """

    name: str

    @property
    def coroutine(self) -> Callable[P, Coroutine[Any, Any, R_co]]:
        """The decorated ``async def``, for awaiting directly (in tests, or from async code).

        ``await task.coroutine(*args, **kwargs)`` runs the body on the running loop, with no
        worker, broker or `run_async` in between; for a ``bind=True`` task the task itself is
        passed as ``self`` (its ``self.request`` is Celery's empty default outside a worker).

        .. versionadded:: 0.1.0
        """
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any: ...

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any: ...

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...

    def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, Any]:
        """``await task.adelay(...)``: `loopsafe.celery.send` (``delay`` without blocking)."""
        ...

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...


AsyncFunction = Callable[P, Coroutine[Any, Any, R]]


@overload
def async_task(function: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...


@overload
def async_task(
    app: celery.Celery | None = None,
    /,
    *,
    bind: Literal[True],
    timeout: float | None = None,
    **task_options: Any,
) -> Callable[[Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]], AsyncTask[P, R]]: ...


@overload
def async_task(
    app: celery.Celery | None = None,
    /,
    *,
    bind: Literal[False] = False,
    timeout: float | None = None,
    **task_options: Any,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], AsyncTask[P, R]]: ...


def async_task(app_or_function: Any = None, /, **task_options: Any) -> Any:
    """Decorate an ``async def`` into a normal Celery task that runs through `run_async`.

    Usable bare (``@async_task``, registered as a shared task with every app) or with an app and
    Celery task options (``@async_task(app, bind=True, autoretry_for=(OSError,),
    soft_time_limit=30)``). The task is a regular ``celery.Task``: ``delay``, ``apply_async``,
    ``bind=True`` with ``self.retry``, ``autoretry_for``, request context, result backends and
    Celery's argument checking all work, because only the body changes: it runs the coroutine on
    the worker thread's persistent loop, where loop-local resources stay pooled across tasks.

    One loopsafe option: ``timeout`` (seconds) is passed to `run_async` on every run; without it
    the limits `install` derives from the task's time limits apply.

    ``task.coroutine`` is the ``async def`` itself, for ``await task.coroutine(...)`` in tests
    and async code (see `AsyncTask.coroutine`).

    Raises:
        TypeError: the decorated function is not an ``async def``, or the first argument is
            neither a Celery app nor None.

    .. versionadded:: 0.1.0
    """
    if inspect.iscoroutinefunction(app_or_function):
        return _register(None, app_or_function, task_options)
    if app_or_function is not None and not callable(getattr(app_or_function, "task", None)):
        raise TypeError(
            "async_task() takes a Celery app (or nothing) and task options, got "
            f"{app_or_function!r}: use @async_task, @async_task(app) or "
            "@async_task(app, bind=True, ...)."
        )

    def decorate(function: AsyncFunction[P, R]) -> AsyncTask[P, R]:
        return _register(app_or_function, function, task_options)

    return decorate


def _register(
    app: celery.Celery | None, function: AsyncFunction[P, R], task_options: dict[str, Any]
) -> AsyncTask[P, R]:
    if not inspect.iscoroutinefunction(function):
        raise TypeError(
            f"async_task decorates `async def` functions, got {function!r}: use @app.task for a "
            "plain function."
        )
    options = dict(task_options)
    timeout = options.pop("timeout", None)
    if timeout is not None:
        timeout = seconds("async_task timeout", timeout)

    registered: list[Any] = []

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        task = registered[0]
        # Celery keeps the request in a thread-local stack, which a coroutine running on the
        # shared process loop cannot see: hand it over in a context variable (run_async copies
        # the caller's context into the coroutine).
        token = _request.set((task.name, task.request))
        try:
            return run_async(function(*args, **kwargs), timeout=timeout)
        finally:
            _request.reset(token)

    # Celery builds its argument check from the task body's own signature (not __wrapped__):
    # give it the coroutine function's, so a wrong call fails at .delay(), not in the worker.
    run.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]
    # Task options become attributes of the task class Celery builds: the coroutine property
    # reads these two (staticmethod: a plain function there would bind to the task).
    options["_loopsafe_function"] = staticmethod(function)
    options["_loopsafe_bind"] = bool(options.get("bind", False))
    if app is None:
        from celery import Task, shared_task

        options["base"] = _request_aware(options.get("base") or Task)
        task = shared_task(**options)(run)
    else:
        options["base"] = _request_aware(options.get("base") or app.Task)
        task = app.task(**options)(run)
    registered.append(task)
    return cast("AsyncTask[P, R]", task)


_request: contextvars.ContextVar[tuple[str, Any]] = contextvars.ContextVar(
    "loopsafe.celery.request"
)


@functools.cache
def _request_aware(base: type[Any]) -> type[Any]:
    """`base` (a Celery Task class) whose ``request`` also works on the shared process loop."""

    class RequestAware(base):  # type: ignore[misc]
        @property
        def request(self) -> Any:
            if self.request_stack.top is None:
                current = _request.get(None)
                if current is not None and current[0] == self.name:
                    return current[1]
            return self._get_request()

        @property
        def coroutine(self) -> Callable[..., Coroutine[Any, Any, Any]]:
            function: Callable[..., Coroutine[Any, Any, Any]] = self._loopsafe_function
            if self._loopsafe_bind:
                return functools.partial(function, self)
            return function

        def adelay(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
            from ._send import send

            return send(self, *args, **kwargs)

    RequestAware.__name__ = RequestAware.__qualname__ = base.__name__
    return RequestAware
