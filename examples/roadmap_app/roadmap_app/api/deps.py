"""Annotated dependency aliases for the routes: session, settings, job queue, event publisher."""

from __future__ import annotations

from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

import loopsafe.celery
from loopsafe.db import session_dependency
from roadmap_app.config import Settings
from roadmap_app.events import EventPublisher
from roadmap_app.jobs import job_signature

__all__ = ("CeleryDep", "EventsDep", "SessionDep", "SettingsDep", "enqueue")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _celery(request: Request) -> Celery:
    celery_app: Celery = request.app.state.celery
    return celery_app


def _events(request: Request) -> EventPublisher:
    events: EventPublisher = request.app.state.events
    return events


SessionDep = Annotated[AsyncSession, Depends(session_dependency)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CeleryDep = Annotated[Celery, Depends(_celery)]
EventsDep = Annotated[EventPublisher, Depends(_events)]


async def enqueue(celery_app: Celery, job: str, *args: Any) -> None:
    """Queue a job from a request handler without blocking the event loop."""
    await loopsafe.celery.send(job_signature(celery_app, job, *args))
