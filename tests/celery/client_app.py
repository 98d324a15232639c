"""The Celery app of the async-client tests: a broker and a result backend, no database.

The worker runs ``celery -A tests.celery.client_app worker``; the tests import the same module to
send (the worker and the sender then agree on names, routing and serializers, as in a real
deployment). Configured from ``LOOPSAFE_CELERY_*`` environment variables.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task


def isolated_app(name: str, broker: str, backend: str, queue: str, **settings: Any) -> Any:
    """A JSON-only Celery app whose messages and Redis keys stay in `queue` (one run's own), with
    `settings` on top; ``benchmarks/_celery_client_app.py`` builds on it too."""
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    transport: dict[str, Any] = {}
    if broker.startswith("redis"):
        transport["global_keyprefix"] = f"{queue}:"
    app.conf.update(
        task_default_queue=queue,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=600,
        **settings,
    )
    return app


def make_app(broker: str, backend: str, queue: str) -> Any:
    """The app as both sides configure it; `queue` isolates one test run's messages and keys."""
    app = isolated_app(
        "loopsafe_client_tests",
        broker,
        backend,
        queue,
        broker_connection_timeout=2,
        worker_prefetch_multiplier=4,
    )

    @app.task(name="client.add", shared=False)  # type: ignore[untyped-decorator]  # Celery is untyped
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="client.sleep_then", shared=False)  # type: ignore[untyped-decorator]
    def sleep_then(seconds: float, value: Any) -> Any:
        time.sleep(seconds)
        return value

    @app.task(name="client.fail", shared=False)  # type: ignore[untyped-decorator]
    def fail(message: str) -> None:
        raise LookupError(message)

    @app.task(name="client.describe", shared=False, bind=True)  # type: ignore[untyped-decorator]
    def describe(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """What the worker saw of the message: the request fields a sender controls."""
        request = self.request
        return {
            "args": list(args),
            "kwargs": kwargs,
            "id": request.id,
            "priority": (request.delivery_info or {}).get("priority"),
            "routing_key": (request.delivery_info or {}).get("routing_key"),
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "reply_to": request.reply_to,
            "headers": {
                key: request.get(key)
                for key in ("lang", "task", "retries", "timelimit", "shadow", "ignore_result")
            },
        }

    @app.task(name="client.spawn", bind=True, shared=False)  # type: ignore[untyped-decorator]
    def spawn(self: Task, *args: Any) -> str:
        """A sync task body that sends a sub-task through send() (on run_async's loop)."""
        from loopsafe.celery import run_async, send

        child = run_async(send(describe, *args), timeout=30)
        return str(child.id)

    return app


if "LOOPSAFE_CELERY_BROKER" in os.environ:  # in the worker process
    app = make_app(
        os.environ["LOOPSAFE_CELERY_BROKER"],
        os.environ["LOOPSAFE_CELERY_BACKEND"],
        os.environ["LOOPSAFE_CELERY_QUEUE"],
    )
