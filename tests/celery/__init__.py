"""Tests of loopsafe.celery: run_async, install(app) and async_task, with real Celery workers."""
