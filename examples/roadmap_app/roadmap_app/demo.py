"""`python -m roadmap_app demo`: the whole system on one machine, one roadmap, then a clean exit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from roadmap_app.processes import (
    ManagedProcess,
    api_command,
    free_port,
    port_is_free,
    wait_for_http,
    worker_command,
)

if TYPE_CHECKING:
    from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis

__all__ = ("ProgressPrinter", "iter_sse", "run_demo")

# (queues, prefork children): the layout a small deployment would use.
WORKERS: tuple[tuple[str, int], ...] = (("workflow", 1), ("content", 2), ("logs", 1))
BAR_WIDTH = 28


def iter_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream into the JSON objects of its `data:` fields."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                with contextlib.suppress(json.JSONDecodeError):
                    yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        with contextlib.suppress(json.JSONDecodeError):
            yield json.loads("\n".join(data))


class ProgressPrinter:
    """Renders progress events as a one-line bar (on a terminal) or as plain lines (in logs)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.status = ""
        self.done = 0
        self.total = 0
        self.stages: dict[int, dict[str, Any]] = {}
        self._last_line_percent = -1
        self._bar_shown = False

    def _write_line(self, text: str) -> None:
        if self._bar_shown and self.tty:
            self.out.write("\r\x1b[2K")
            self._bar_shown = False
        self.out.write(text + "\n")
        self.out.flush()

    def bar(self) -> str:
        percent = 100 * self.done // self.total if self.total else 0
        filled = BAR_WIDTH * self.done // self.total if self.total else 0
        current = next(
            (s for _, s in sorted(self.stages.items()) if s.get("done", 0) < s.get("total", 0)),
            None,
        )
        where = (
            f"  stage {current['position']}/{len(self.stages)} {current['title']}"
            if current
            else ""
        )
        return (
            f"  [{'█' * filled}{'░' * (BAR_WIDTH - filled)}] {percent:3d}%  "
            f"{self.done}/{self.total} concepts{where}"
        )

    def _show_bar(self) -> None:
        percent = 100 * self.done // self.total if self.total else 0
        if self.tty:
            self.out.write("\r\x1b[2K" + self.bar())
            self.out.flush()
            self._bar_shown = True
        elif percent >= self._last_line_percent + 10 or percent == 100:
            self._last_line_percent = percent - percent % 10
            self.out.write(self.bar() + "\n")
            self.out.flush()

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "snapshot":
            self.done, self.total = int(event["done"]), int(event["total"])
            self.stages = {int(s["position"]): dict(s) for s in event.get("stages", [])}
            self._status(str(event["status"]), event.get("error"))
            if self.total:
                self._show_bar()
        elif kind == "status":
            self._status(str(event["status"]), event.get("error"))
        elif kind == "curriculum":
            self.stages = {int(s["position"]): {**s, "done": 0} for s in event.get("stages", [])}
            self.total, self.done = int(event["total"]), 0
            self._write_line(
                f"  curriculum v{event['version']}: {len(self.stages)} stages, "
                f"{self.total} concepts"
            )
        elif kind == "concept_saved":
            self.done = max(self.done, int(event["done"]))
            self.total = int(event["total"]) or self.total
            stage = self.stages.get(int(event["stage"]))
            if stage is not None:
                stage["done"] = max(int(stage.get("done", 0)), int(event["stage_done"]))
            self._show_bar()

    def _status(self, status: str, error: Any) -> None:
        if status == self.status:
            return
        self.status = status
        suffix = f": {error}" if error else ""
        self._write_line(f"  status → {status}{suffix}")


def _print_summary(roadmap: dict[str, Any], seconds: float, out: Any) -> None:
    def say(text: str = "") -> None:
        out.write(text + "\n")

    concepts = [c for s in roadmap["stages"] for m in s["modules"] for c in m["concepts"]]
    with_content = sum(1 for c in concepts if c["has_content"])
    say()
    say(f"✓ {roadmap['title'] or roadmap['goal']} — {roadmap['status']} in {seconds:.1f} s")
    if roadmap.get("summary"):
        say(f"  {roadmap['summary']}")
    say(
        f"  {len(roadmap['stages'])} stages, {len(concepts)} concepts, {with_content} with "
        "tutorial + resources + quiz"
    )
    for stage in roadmap["stages"]:
        modules = " · ".join(f"{m['title']} ({len(m['concepts'])})" for m in stage["modules"])
        say(f"  {stage['position']}. {stage['title']:<18} {modules}")
    first = next((c for c in concepts if c.get("content")), None)
    if first is not None:
        say()
        say(f"  Tutorial excerpt — {first['title']}:")
        prose = " ".join(
            line.strip()
            for line in first["content"]["tutorial"].splitlines()
            if line.strip() and not line.startswith("#")
        )
        for line in textwrap.wrap(prose, width=96)[:3]:
            say(f"    {line}")
        quiz = first["content"]["quiz"]
        if quiz:
            say(f"  Quiz: {len(quiz)} questions, e.g. “{quiz[0]['question']}”")
    steps = ", ".join(
        f"{log['step']} {log['status']}"
        + (f" ({log['duration_ms']} ms)" if log.get("duration_ms") is not None else "")
        for log in roadmap.get("logs", [])
    )
    if steps:
        say(f"  Execution log: {steps}"[:300])


class _Demo:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.processes: list[ManagedProcess] = []
        self.servers: list[Any] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix="roadmap-demo-"))

    def say(self, text: str) -> None:
        print(f"{text}", flush=True)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"

    def servers_from_env_or_embedded(self) -> tuple[str, str]:
        database_url = os.environ.get("DATABASE_URL", "").strip()
        redis_url = os.environ.get("REDIS_URL", "").strip()
        if not database_url or not redis_url:
            try:
                from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis
            except ImportError as exc:
                raise SystemExit(
                    f"The demo needs PostgreSQL and Redis: set DATABASE_URL and REDIS_URL, or "
                    f"pip install 'roadmap-app[embedded]' for embedded servers ({exc})."
                ) from exc
            if not database_url:
                database_url = self.start_embedded("PostgreSQL", EmbeddedPostgres())
            if not redis_url:
                redis_url = self.start_embedded("Redis", EmbeddedRedis())
        if os.environ.get("DATABASE_URL"):
            self.say(f"[{self.elapsed()}] PostgreSQL  from DATABASE_URL")
        if os.environ.get("REDIS_URL"):
            self.say(f"[{self.elapsed()}] Redis       from REDIS_URL")
        return database_url, redis_url

    def start_embedded(self, label: str, server: EmbeddedPostgres | EmbeddedRedis) -> str:
        self.servers.append(server)
        server.start()
        self.say(f"[{self.elapsed()}] {label:<12}embedded, 127.0.0.1:{server.port}")
        return server.url

    def start(self, name: str, command: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, command, env=env, log_path=self.log_dir / f"{name}.log")
        self.processes.append(process)
        return process.start()

    def shutdown(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=15)
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.close()


def run_demo(
    *,
    goal: str = "Learn Python for data analysis",
    level: str = "beginner",
    weekly_hours: int = 6,
    serve: bool = False,
    port: int | None = None,
) -> int:
    """Run the demo; returns the process exit code (0 when the roadmap completed)."""
    from roadmap_app.__main__ import migrate_database
    from roadmap_app.migrations import SCHEMA_VERSION

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # `kill <pid>` must shut the servers and workers down too, like Ctrl-C does.
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    demo = _Demo()
    demo.say(
        "roadmap_app demo — FastAPI + Celery (prefork) + PostgreSQL + Redis, built on loopsafe"
    )
    ok = False
    try:
        database_url, redis_url = demo.servers_from_env_or_embedded()
        applied = migrate_database(database_url)
        demo.say(
            f"[{demo.elapsed()}] schema      version {SCHEMA_VERSION}"
            + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)")
        )
        children = sum(concurrency for _, concurrency in WORKERS)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATABASE_MAX_CONNECTIONS": os.environ.get("DATABASE_MAX_CONNECTIONS", "50"),
            # Every process that opens a pool: the API plus each prefork child.
            "LOOPSAFE_PROCESSES": str(1 + children),
            "PYTHONUNBUFFERED": "1",
        }
        for queue, concurrency in WORKERS:
            demo.start(
                f"worker-{queue}",
                worker_command(
                    [queue], concurrency=concurrency, name=f"{queue}@%h", beat=queue == "workflow"
                ),
                env,
            )
        demo.say(
            f"[{demo.elapsed()}] workers     "
            + ", ".join(f"{queue} ×{concurrency}" for queue, concurrency in WORKERS)
            + " (Celery prefork)"
        )
        if port is None:
            port = 8000 if port_is_free(8000) else free_port()
        base = f"http://127.0.0.1:{port}"
        api = demo.start("api", api_command(host="127.0.0.1", port=port), env)
        health = wait_for_http(f"{base}/health", timeout=60, process=api).json()
        pool = health["database"]["budget"]
        demo.say(
            f"[{demo.elapsed()}] API         {base}  (uvicorn; connection budget "
            f"{pool['max_connections']} shared by {pool['processes']} processes, "
            f"{pool['per_process']} each)"
        )
        with httpx.Client(base_url=base, timeout=30.0) as client:
            demo.say(f"\nGoal: {goal!r} ({level}, {weekly_hours} h/week)")
            response = client.post(
                "/api/v1/roadmaps",
                json={"goal": goal, "level": level, "weekly_hours": weekly_hours},
            )
            response.raise_for_status()
            roadmap_id = response.json()["task_id"]
            submitted = time.monotonic()
            demo.say(f"  task {roadmap_id} accepted ({response.status_code})")
            printer = ProgressPrinter()
            with client.stream(
                "GET", f"/api/v1/roadmaps/{roadmap_id}/events", timeout=None
            ) as stream:
                for event in iter_sse(stream.iter_lines()):
                    printer.handle(event)
                    if printer.status in ("completed", "failed"):
                        break
            roadmap = client.get(f"/api/v1/roadmaps/{roadmap_id}").json()
            if roadmap["status"] != "completed":
                demo.say(f"\n✗ roadmap {roadmap['status']}: {roadmap.get('error')}")
                return 1
            _print_summary(roadmap, time.monotonic() - submitted, sys.stdout)
            ok = True
            if serve:
                demo.say(f"\nOpen {base}/?roadmap={roadmap_id} to browse it (tutorials, quizzes).")
            else:
                # Without --serve the URL dies with this run: say so rather than invite a click
                # on a server that is about to stop (issue 22).
                demo.say(
                    f"\nThe servers stop now, and {base} with them. To browse "
                    f"{base}/?roadmap={roadmap_id} (tutorials, quizzes), run the demo with "
                    "--serve: it keeps everything running until Ctrl-C."
                )
        if serve:
            demo.say(f"Serving on {base} — press Ctrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                while all(p.alive for p in demo.processes):
                    time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        demo.say("\ninterrupted")
        return 130
    except Exception as exc:
        demo.say(f"\n✗ demo failed: {type(exc).__name__}: {exc}")
        for process in demo.processes:
            demo.say(f"--- {process.name} ({process.log_path}) ---\n{process.tail(15)}")
        return 1
    finally:
        demo.say(
            f"\n[{demo.elapsed()}] shutting down {len(demo.processes)} processes"
            + (f" and {len(demo.servers)} embedded servers" if demo.servers else "")
        )
        demo.shutdown()
        if ok:
            shutil.rmtree(demo.log_dir, ignore_errors=True)
        else:
            demo.say(f"logs kept in {demo.log_dir}")
        demo.say(f"[{demo.elapsed()}] done")
