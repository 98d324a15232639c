"""The sync-to-async bridge: run_async and the event loops it runs coroutines on (no Celery)."""
