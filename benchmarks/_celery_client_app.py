"""The Celery app, worker and uvicorn API that ``bench_celery_client.py`` runs in subprocesses.

Configured from ``LOOPSAFE_BENCH_CELERY_*`` environment variables. The API has two endpoints:
``POST /send`` queues one task the way ``LOOPSAFE_BENCH_CELERY_MODE`` says (``send``: loopsafe;
``delay``: ``task.delay()`` on the event loop; ``threadpool``: ``run_in_threadpool(task.delay)``),
and ``GET /cheap`` answers at once: its latency shows whether the loop was free.
"""

from __future__ import annotations

import os
import time
from typing import Any

# The same isolated app as the async client's tests (the repository root is on the path).
from tests.celery.client_app import isolated_app


def make_celery(broker: str, backend: str, queue: str) -> Any:
    app = isolated_app(
        "loopsafe_bench_client", broker, backend, queue, worker_prefetch_multiplier=16
    )

    @app.task(name="bench.noop", shared=False)  # type: ignore[untyped-decorator]  # untyped Celery
    def noop(n: int) -> int:
        return n

    @app.task(name="bench.stamp", shared=False)  # type: ignore[untyped-decorator]
    def stamp(seconds: float) -> float:
        """Sleeps, then returns when it finished (wall clock: the waiters compare theirs)."""
        time.sleep(seconds)
        return time.time()

    return app


if "LOOPSAFE_BENCH_CELERY_BROKER" in os.environ:
    app = make_celery(
        os.environ["LOOPSAFE_BENCH_CELERY_BROKER"],
        os.environ["LOOPSAFE_BENCH_CELERY_BACKEND"],
        os.environ["LOOPSAFE_BENCH_CELERY_QUEUE"],
    )

if "LOOPSAFE_BENCH_CELERY_MODE" in os.environ:
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    import loopsafe.celery

    MODE = os.environ["LOOPSAFE_BENCH_CELERY_MODE"]
    noop_task = app.tasks["bench.noop"]
    api = FastAPI()
    counter = 0

    @api.post("/send")
    async def send_one() -> dict[str, str]:
        global counter
        counter += 1
        if MODE == "send":
            sent = await loopsafe.celery.send(noop_task, counter)
        elif MODE == "threadpool":
            sent = await run_in_threadpool(noop_task.delay, counter)
        else:
            sent = noop_task.delay(counter)
        return {"id": sent.id}

    @api.get("/cheap")
    async def cheap() -> dict[str, bool]:
        return {"ok": True}
