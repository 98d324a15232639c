"""async_task: an `async def` becomes an ordinary Celery task (in-process; workers: test_worker)."""

from __future__ import annotations

import asyncio
import math
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsafe.celery import AsyncTask, async_task


class JobFailed(Exception):
    def __init__(self, job: str) -> None:
        super().__init__(job)
        self.job = job


@pytest.fixture
def app() -> Iterator[Celery]:
    application = Celery("loopsafe_async_task_tests", broker="memory://", set_as_current=False)
    yield application
    application.close()


def test_decorated_coroutine_is_a_celery_task_that_runs_synchronously(app: Celery) -> None:
    @async_task(app, shared=False)
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert isinstance(double, Task)
    assert double.name == f"{__name__}.double"
    assert app.tasks[double.name].run.__wrapped__.__name__ == "double"
    value: int = double(21)  # the call signature is the coroutine's (checked by mypy)
    assert value == 42
    assert double.apply(args=(4,)).get() == 8


def test_bare_decorator_registers_a_shared_task() -> None:
    @async_task
    async def shared_triple(x: int) -> int:
        return 3 * x

    assert shared_triple(2) == 6
    application = Celery("loopsafe_shared_task_tests", broker="memory://", set_as_current=False)
    try:
        assert f"{__name__}.shared_triple" in application.tasks
    finally:
        application.close()


def test_wrong_arguments_fail_when_sending_not_in_the_worker(app: Celery) -> None:
    @async_task(app, shared=False)
    async def needs_one(x: int) -> int:
        return x

    # Celery's argument check sees the coroutine's own signature (nothing is sent: no broker).
    with pytest.raises(TypeError, match=r"needs_one\(\) takes 1 positional argument but 2"):
        needs_one.delay(1, 2)  # type: ignore[call-arg]


def test_bound_task_gets_its_request(app: Celery) -> None:
    @async_task(app, bind=True, shared=False)
    async def whoami(self: Task, tag: str) -> dict[str, Any]:
        return {"id": self.request.id, "tag": tag, "name": self.name}

    outcome = whoami.apply(args=("x",), task_id="fixed-id").get()
    assert outcome == {"id": "fixed-id", "tag": "x", "name": whoami.name}


def test_errors_keep_their_type_and_coroutine_traceback(app: Celery) -> None:
    @async_task(app, shared=False)
    async def fails(job: str) -> None:
        raise JobFailed(job)

    result = fails.apply(args=("nightly",))
    assert isinstance(result.result, JobFailed)
    assert result.result.job == "nightly"
    assert result.state == "FAILURE"
    frames = [f.name for f in traceback.extract_tb(result.result.__traceback__)]
    assert "fails" in frames


def test_timeout_option_cancels_a_slow_run(app: Celery) -> None:
    cleanup: list[str] = []

    @async_task(app, shared=False, timeout=0.1)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleanup.append("cleaned up")

    result = slow.apply()
    assert isinstance(result.result, TimeoutError)
    assert cleanup == ["cleaned up"]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-2, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     ("3", TypeError), (True, TypeError)],
    ids=repr,
)  # fmt: skip
def test_bad_timeout_option_is_rejected(app: Celery, timeout: Any, error: type[Exception]) -> None:
    async def body() -> None:
        return None

    with pytest.raises(error, match=r"async_task timeout must be a .*number of seconds"):
        async_task(app, timeout=timeout)(body)
    assert "body" not in {name.rpartition(".")[2] for name in app.tasks}


def test_only_async_functions_can_be_decorated(app: Celery) -> None:
    def plain() -> int:
        return 1

    with pytest.raises(TypeError, match=r"decorates `async def` functions.*use @app\.task"):
        async_task(app)(plain)


def test_first_argument_must_be_an_app() -> None:
    with pytest.raises(TypeError, match=r"takes a Celery app .*got 42"):
        async_task(42)


@pytest.mark.both_loops
async def test_eager_task_called_from_async_code_does_not_deadlock(app: Celery) -> None:
    """task_always_eager inside a running loop (a FastAPI handler, say): runs on a helper loop."""
    app.conf.task_always_eager = True

    @async_task(app, shared=False)
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    ran_on = where.delay().get()
    assert ran_on.startswith("loopsafe-run-async-helper")


def test_typed_as_async_task(app: Celery) -> None:
    @async_task(app, shared=False)
    async def add(x: int, y: int) -> int:
        return x + y

    typed: AsyncTask[[int, int], int] = add
    assert typed(1, 2) == 3


# --- task.coroutine: the body, awaited directly ---------------------------------------------------


async def test_coroutine_is_awaited_on_the_callers_loop(app: Celery) -> None:
    """No worker, no run_async: the body runs on the test's own loop, and its errors propagate."""

    @async_task(app, shared=False)
    async def where(x: int, *, scale: int = 2) -> tuple[int, asyncio.AbstractEventLoop]:
        if x < 0:
            raise JobFailed(str(x))
        return x * scale, asyncio.get_running_loop()

    value, loop = await where.coroutine(21)
    assert (value, loop) == (42, asyncio.get_running_loop())
    assert (await where.coroutine(1, scale=3))[0] == 3
    with pytest.raises(JobFailed, match="-1"):
        await where.coroutine(-1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        await where.coroutine(1, nope=2)  # type: ignore[call-arg]


async def test_bound_coroutine_gets_the_task_as_self(app: Celery) -> None:
    """The guess `task.run.__wrapped__(task, ...)` failed with "multiple values for argument"."""

    @async_task(app, bind=True, shared=False)
    async def whoami(self: Task, tag: str) -> tuple[Task, str, object]:
        return self, tag, self.request.id

    task, tag, request_id = await whoami.coroutine("x")
    assert (task, tag, request_id) == (whoami, "x", None)  # no request outside a worker
    assert (await whoami.coroutine(tag="y"))[1] == "y"


async def test_shared_task_coroutine_and_a_custom_base(app: Celery) -> None:
    class Base(Task):  # type: ignore[misc]
        marker = "custom base"

    @async_task(app, base=Base, bind=True, shared=False)
    async def with_base(self: Base) -> str:
        return str(self.marker)

    @async_task
    async def shared_square(x: int) -> int:
        return x * x

    assert await with_base.coroutine() == "custom base"
    assert await shared_square.coroutine(9) == 81
    assert shared_square(3) == 9  # the task itself still runs through run_async


def test_coroutine_keeps_the_functions_identity(app: Celery) -> None:
    async def plain(x: int) -> int:
        return x

    task = async_task(app, shared=False)(plain)
    assert task.coroutine is plain


@given(x=st.integers(), y=st.integers(), scale=st.integers(-3, 3))
@settings(max_examples=40, deadline=None)
def test_coroutine_and_task_agree_on_every_argument(x: int, y: int, scale: int) -> None:
    """The body awaited directly and the task run through run_async compute the same thing."""
    application = Celery("loopsafe_coroutine_property", broker="memory://", set_as_current=False)
    try:

        @async_task(application, shared=False)
        async def combine(a: int, b: int, *, scale: int = 1) -> int:
            await asyncio.sleep(0)
            return (a + b) * scale

        direct = asyncio.run(combine.coroutine(x, y, scale=scale))
        assert direct == combine(x, y, scale=scale) == (x + y) * scale
    finally:
        application.close()
