"""Tests of loopsafe.celery: install(app) and async_task, with real Celery workers."""
