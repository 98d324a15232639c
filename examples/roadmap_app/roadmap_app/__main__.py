"""`python -m roadmap_app demo|serve|api|worker|migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roadmap_app.config import PoolerName as Pooler

__all__ = ("main",)


async def _migrate(url: str, pooler: Pooler | None) -> list[int]:
    import loopsafe.db
    from roadmap_app.migrations import migrate

    # A pool of its own, without the app's budget: migrations run before anything else, once.
    database = loopsafe.db.Database(url, name="migrations", poolclass="null", pooler=pooler)
    try:
        async with database.get_engine().begin() as connection:
            return await migrate(connection)
    finally:
        await database.aclose()


def migrate_database(url: str, *, pooler: Pooler | None = None) -> list[int]:
    """Bring the database at `url` to the current schema; return the versions applied now.

    `pooler="transaction"` when `url` goes through PgBouncer/Supabase transaction pooling.
    """
    return asyncio.run(_migrate(url, pooler))


def _cmd_migrate(_: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from roadmap_app.config import get_settings
    from roadmap_app.migrations import SCHEMA_VERSION

    settings = get_settings()
    url = settings.database_url
    applied = migrate_database(url, pooler=settings.database_pooler)
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to do"
    where = make_url(url).render_as_string(hide_password=True)
    print(f"schema version {SCHEMA_VERSION} on {where}: {done}")
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "roadmap_app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=3,
        workers=args.workers,
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from roadmap_app.worker import app

    argv = [
        "worker",
        "--pool", args.pool,
        "--queues", args.queues,
        "--concurrency", str(args.concurrency),
        "--loglevel", args.log_level.upper(),
        # No broadcast chatter between workers: faster start-up, fewer Redis connections.
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    if args.name:
        argv += ["--hostname", args.name]
    if args.beat:
        # The schedule's state file goes to a private directory, not the working directory.
        argv += ["--beat", "--schedule", str(Path(tempfile.mkdtemp()) / "beat-schedule")]
    for option, value in (
        ("--soft-time-limit", args.soft_time_limit),
        ("--time-limit", args.time_limit),
        ("--max-tasks-per-child", args.max_tasks_per_child),
    ):
        if value:
            argv += [option, f"{value:g}"]
    app.worker_main(argv)
    return 0


def _cmd_serve(_: argparse.Namespace) -> int:
    from roadmap_app.config import get_settings
    from roadmap_app.layout import Layout, serve

    return serve(get_settings(), Layout.from_env())


def _cmd_demo(args: argparse.Namespace) -> int:
    from roadmap_app.demo import run_demo

    return run_demo(
        goal=args.goal,
        level=args.level,
        weekly_hours=args.weekly_hours,
        serve=args.serve,
        port=args.port,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m roadmap_app",
        description="loopsafe's example app: learning roadmaps on FastAPI + Celery + PostgreSQL + Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run everything (embedded PostgreSQL and Redis unless DATABASE_URL/REDIS_URL are "
        "set) and generate one roadmap",
    )
    demo.add_argument("--goal", default="Learn Python for data analysis")
    demo.add_argument(
        "--level", default="beginner", choices=("beginner", "intermediate", "advanced")
    )
    demo.add_argument("--weekly-hours", type=int, default=6)
    demo.add_argument("--serve", action="store_true", help="keep everything running until Ctrl-C")
    demo.add_argument("--port", type=int, default=None, help="HTTP port (default: 8000 if free)")
    demo.set_defaults(run=_cmd_demo)

    serve = commands.add_parser(
        "serve",
        help="production entrypoint: migrate, then run the API and a worker per queue, sized by "
        "WEB_CONCURRENCY, CELERY_<QUEUE>_CONCURRENCY, … (see roadmap_app.layout)",
    )
    serve.set_defaults(run=_cmd_serve)

    api = commands.add_parser("api", help="serve the HTTP API and web page with uvicorn")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.add_argument("--log-level", default="info")
    api.set_defaults(run=_cmd_api)

    worker = commands.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default="workflow,content,logs")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    worker.add_argument("--name", default=None, help="Celery node name, e.g. content@%%h")
    worker.add_argument("--soft-time-limit", type=float, default=None, metavar="SECONDS")
    worker.add_argument("--time-limit", type=float, default=None, metavar="SECONDS")
    worker.add_argument("--max-tasks-per-child", type=int, default=None, metavar="N")
    worker.add_argument("--log-level", default="info")
    worker.add_argument(
        "--beat",
        action="store_true",
        help="also run the schedule (the sweeper of abandoned jobs); one per deployment",
    )
    worker.set_defaults(run=_cmd_worker)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(run=_cmd_migrate)
    return parser


def _unreachable(exc: BaseException) -> str | None:
    """A one-line hint for a server that cannot be reached, or None if `exc` is something else.

    `serve` or `migrate` without PostgreSQL printed a 134-line traceback (issue 22).
    """
    import redis.exceptions
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    from roadmap_app.config import get_settings

    if not isinstance(
        exc, (OSError, sqlalchemy.exc.OperationalError, redis.exceptions.ConnectionError)
    ):
        return None
    settings = get_settings()
    database = make_url(settings.database_url)
    redis_url = settings.redis_url.rsplit("@", 1)[-1]  # never print a password
    text = str(exc)
    if isinstance(exc, redis.exceptions.ConnectionError) or (
        redis_url.split("//")[-1].split("/")[0] in text
    ):
        return (
            f"cannot reach Redis at {redis_url} ({text}); start it, or set REDIS_URL to a "
            "running server"
        )
    where = database.render_as_string(hide_password=True)
    return (
        f"cannot reach PostgreSQL at {where} ({text}); start it, or set DATABASE_URL to a "
        "running server"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from roadmap_app.config import SettingsError

    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        hint = _unreachable(exc)
        if hint is None:
            raise
        print(f"error: {hint}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
