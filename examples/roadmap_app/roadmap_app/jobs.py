"""Job names, the queue each runs on, and the Celery app that queues them (no side effects)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from roadmap_app.config import Settings

__all__ = ("QUEUES", "TASK_PREFIX", "create_celery_app", "job_signature", "send_job")

# Job name → queue. Content generation has its own queue (and workers) so a long roadmap never
# holds up curriculum design for the next user; logs are cheap and must never wait behind either.
QUEUES: dict[str, str] = {
    "generate_roadmap": "workflow",
    "resume_after_review": "workflow",
    "generate_content": "content",
    "resume_from_checkpoint": "content",
    "write_execution_log": "logs",
    "sweep_abandoned": "workflow",
}
TASK_PREFIX = "roadmap."


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app on the settings' broker; its Redis keys carry `ROADMAP_KEY_PREFIX`."""
    celery_app = Celery("roadmap_app", broker=settings.broker_url, set_as_current=False)
    transport: dict[str, Any] = {"socket_connect_timeout": 3}
    if settings.key_prefix:
        transport["global_keyprefix"] = settings.key_prefix
    celery_app.conf.update(
        task_routes={TASK_PREFIX + job: {"queue": queue} for job, queue in QUEUES.items()},
        task_default_queue="workflow",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # One job at a time per child: a long content job must not hold a second one hostage.
        worker_prefetch_multiplier=1,
        # Not acks_late: a job whose worker is killed is recovered by the sweeper below once its
        # lease expires (the Redis transport would only redeliver after its visibility timeout),
        # from the database checkpoint: only the missing concepts run.
        task_acks_late=False,
        beat_schedule={
            "sweep-abandoned": {
                "task": TASK_PREFIX + "sweep_abandoned",
                "schedule": settings.sweep_interval_s,
                "options": {
                    "queue": QUEUES["sweep_abandoned"],
                    "expires": settings.sweep_interval_s,
                },
            }
        },
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_enable_remote_control=False,
        task_soft_time_limit=15 * 60,
        task_time_limit=16 * 60,
    )
    return celery_app


def job_signature(celery_app: Celery, job: str, *args: Any) -> Any:
    """`job` with `args`, routed to its queue, with a few quick publish retries.

    Await ``loopsafe.celery.send(job_signature(...))`` from async code: it publishes without
    blocking the event loop and raises ``loopsafe.celery.BrokerUnavailableError`` when the broker
    cannot be reached. Raises `KeyError` for an unknown job.
    """
    return celery_app.signature(
        TASK_PREFIX + job,
        args=list(args),
        queue=QUEUES[job],
        retry=True,
        retry_policy={
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.3,
            "interval_max": 0.5,
        },
    )


def send_job(celery_app: Celery, job: str, *args: Any) -> None:
    """Queue `job` with `args` from synchronous code (blocking).

    Raises `KeyError` for an unknown job and kombu's `OperationalError` when the broker cannot be
    reached after a few quick retries.
    """
    job_signature(celery_app, job, *args).apply_async()
