"""roadmap_app: loopsafe's example application (FastAPI + Celery + PostgreSQL + Redis)."""

__version__ = "0.1.0"
