"""The seed-004 incident in a lab: content generation against the web API behind a real PgBouncer.

A FastAPI + Celery app behind a transaction pooler (about 50 server connections) ran ~21
processes, each with its own pool; while content generation ran, the API could not get a
connection and most of its requests timed out. This lab rebuilds that deployment from real
parts and measures it, configuration by configuration, in one run:

- PostgreSQL (``$LOOPSAFE_BENCH_DATABASE_URL``, else the local one at
  ``postgresql://postgres@127.0.0.1:5432/test`` if it answers, else a private embedded one)
  behind a real PgBouncer in transaction mode (``default_pool_size=50``, ``max_client_conn=200``);
  Redis (``$LOOPSAFE_BENCH_REDIS_URL``, else a private one) as broker and event bus;
- the example app started by its production entrypoint, ``python -m roadmap_app serve``:
  uvicorn API workers and Celery prefork workers on the ``workflow``, ``content`` and ``logs``
  queues, configured only through the environment (a profile is a set of variables);
- the offline LLM at about 1 s ± 30 % per call, so generation is LLM-bound as in production;
- an open-loop client (fixed arrival rate, 5 s timeout) on the read endpoints and one write
  endpoint: an idle window, then K roadmaps of 30 concepts generated at once.

Profiles: ``seed-before`` (the incident's settings), ``seed-fix`` (the team's hand-tuned fix),
``loopsafe`` (the seed's layout with one role-weighted BudgetPlan, no connection held across an
LLM call, batched saves) and ``loopsafe-shared-loop`` (the same on shared-loop workers: one
process per queue, ``--pool threads`` with ``install(app, loop="process")``, planned as one loop
per process). ``seed-before`` and ``loopsafe`` run again with fewer server connections
(``--starvation-pools``, default 20 and 15) to find where the seed's configuration starves.

429s avoided (``--rate-limit``, on by default): the app's OpenAI provider against a fake
OpenAI-compatible server that answers 429 (``Retry-After: 1``) above ``--provider-cap`` calls in
flight, K roadmaps across the content worker's processes, once with the deployment-wide limit
(``loopsafe.llm.limit`` through Redis, ``LLM_CONCURRENCY`` = the cap) and once with a limit per
process (``LLM_LIMIT_SCOPE=process``, what the seed did): 429s seen and concepts failed by them.

Writes results/contention.md and results/contention.png. ``--quick`` runs a short version for CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The app's test kit: its fake OpenAI server is the lab's capped provider.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "examples/roadmap_app/tests"))

import _db_bound
from _report import RESULTS, write_results
from roadmap_testkit import fake_openai

from loopsafe.testing import EmbeddedPostgres, EmbeddedRedis, PgBouncer, free_port
from roadmap_app.__main__ import migrate_database
from roadmap_app.config import Settings
from roadmap_app.layout import Layout
from roadmap_app.llm import OfflineProvider
from roadmap_app.pipeline.calls import Brief, LLMOptions
from roadmap_app.pipeline.curriculum import design_curriculum
from roadmap_app.pipeline.intent import analyze_intent
from roadmap_app.processes import ManagedProcess, wait_for_http

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVER_POOL = 50  # PgBouncer default_pool_size: the server connections, as on Supabase
MAX_CLIENTS = 200  # PgBouncer max_client_conn, like Supabase's client limit
LLM_CONCURRENCY = 6  # concepts in flight per roadmap, the same in every profile
CLIENT_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 0.5
APP_VARIABLES = ("LLM_", "DATABASE_", "LOOPSAFE_", "CELERY_", "CONTENT_", "WEB_", "REDIS_")
WARMUP_S = 5.0  # load before the idle window that is not measured (--quick: 2 s)

# The seed's layout: 4 uvicorn workers; content -c 6, workflow -c 4, logs -c 4.
SEED_LAYOUT = {
    "WEB_CONCURRENCY": "4",
    "CELERY_CONTENT_CONCURRENCY": "6",
    "CELERY_WORKFLOW_CONCURRENCY": "4",
    "CELERY_LOGS_CONCURRENCY": "4",
}
PROFILES: dict[str, dict[str, str]] = {
    "seed-before": {
        **SEED_LAYOUT,
        "DATABASE_POOL_SIZE": "2",
        "DATABASE_MAX_OVERFLOW": "2",
        "CONTENT_WRITE_MODE": "per-concept",
        "CONTENT_DB_SEMAPHORE": "3",
    },
    "seed-fix": {
        **SEED_LAYOUT,
        "WEB_CONCURRENCY": "2",
        "CELERY_CONTENT_CONCURRENCY": "3",
        "DATABASE_POOL_SIZE": "5",
        "DATABASE_MAX_OVERFLOW": "5",
        "CONTENT_WRITE_MODE": "per-concept",
        "CONTENT_DB_SEMAPHORE": "8",
    },
    "loopsafe": {
        **SEED_LAYOUT,
        # One plan for the whole deployment, derived by `serve` from the layout and the pooler's
        # server connections (DATABASE_MAX_CONNECTIONS, set per run): a web process weighs 4
        # worker processes.
        "DATABASE_WEB_WEIGHT": "4",
        "CONTENT_WRITE_MODE": "batched",
        "CONTENT_BATCH_SIZE": "8",
    },
}
SHARED_LOOP = "loopsafe-shared-loop"
# The same, with each queue's worker one process of threads whose coroutines share one loop
# (install(app, loop="process")): the plan counts one loop per worker process.
PROFILES[SHARED_LOOP] = {
    **PROFILES["loopsafe"],
    "CELERY_POOL": "threads",
    "CELERY_WORKER_LOOP": "process",
}
ELASTIC = "loopsafe-elastic"
# The seed's layout (18 processes) on one elastic plan: no process counts, the API first, the
# workers everything else; the lab writes the plan (server connections, its Redis) per run.
PROFILES[ELASTIC] = {**PROFILES["loopsafe"], "LAB_ELASTIC_PLAN": "1"}
ELASTIC_ROLES = {
    "web": {"priority": 10},
    "workflow": {"priority": 5, "headroom": 2},
    "logs": {"priority": 5, "headroom": 2},
    "content": {"priority": 0, "headroom": 3},
}
# Profiles whose static plan `serve` derives from the layout (it can refuse too few connections).
PLANNED_BY_SERVE = ("loopsafe", SHARED_LOOP)
STARVATION_PROFILES = ("seed-before", "loopsafe", ELASTIC)
# With too few server connections for the seed's 18 processes to get one each, the plan refuses
# that layout (`python -m loopsafe budget` says what would fit); loopsafe runs a smaller one.
SMALL_LAYOUT = {
    "WEB_CONCURRENCY": "2",
    "CELERY_WORKFLOW_CONCURRENCY": "2",
    "CELERY_LOGS_CONCURRENCY": "2",
}
# Request mix of the open-loop client: (weight, name). The write creates a roadmap that stops at
# human review: a real write and a workflow job, without adding content generation.
MIX = ((45, "get roadmap"), (30, "list"), (20, "health"), (5, "create"))


@dataclasses.dataclass
class Request:
    start: float  # seconds since the run's t0
    latency: float
    kind: str
    outcome: str  # "ok", "timeout", "error <status or exception>"


@dataclasses.dataclass
class Sample:
    t: float
    sv_active: int
    sv_total: int
    cl_active: int
    cl_waiting: int
    maxwait_s: float
    web_wait_s: float  # longest current wait at the pooler of an API connection
    backends: int  # pg_stat_activity rows of the app's database
    wait_us: int  # SHOW STATS total_wait_time: client waits for a server connection, cumulative
    xacts: int  # SHOW STATS total_xact_count
    rss_mb: float
    processes: int


@dataclasses.dataclass
class Run:
    profile: str
    requests: list[Request]
    samples: list[Sample]
    gen_start: float
    gen_end: float
    concepts: int
    ideal_s: float
    budget: str
    pool_waits: tuple[int, float]  # API checkouts that waited > 1 ms, their total seconds
    roadmaps: int
    completed: int
    warmup: float
    # Log lines of the app's processes that tell a process went unserved (pool timeouts) and
    # the ledger's events (elastic plans only), counted.
    unserved: int = 0
    ledger_events: dict[str, int] = dataclasses.field(default_factory=dict)

    def window(self, generation: bool) -> list[Request]:
        if generation:
            return [r for r in self.requests if self.gen_start <= r.start < self.gen_end]
        return [r for r in self.requests if self.warmup <= r.start < self.gen_start]


# -- servers ------------------------------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """(PostgreSQL URL, Redis URL): configured, local, or private embedded ones."""
    with contextlib.ExitStack() as stack:
        database = os.environ.get("LOOPSAFE_BENCH_DATABASE_URL")
        if not database:
            database = LOCAL_URL if _answers(LOCAL_URL) else None
        if not database:
            database = stack.enter_context(EmbeddedPostgres()).url
        redis_url = os.environ.get("LOOPSAFE_BENCH_REDIS_URL") or ""
        if not redis_url:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        yield database, redis_url


def goals_with(concepts: int, count: int) -> list[str]:
    """`count` goals whose offline curriculum has exactly `concepts` concepts (deterministic)."""
    llm = OfflineProvider()
    options = LLMOptions(concurrency=1)
    topics = ["Python", "SQL", "Rust", "Go", "Kotlin", "Haskell", "Elixir", "Swift", "Scala",
              "Ruby", "Julia", "R", "Java", "Lua", "Perl", "Dart", "Zig", "OCaml", "Clojure",
              "Erlang", "C", "Fortran", "Prolog", "TypeScript", "Racket", "Nim", "Crystal"]  # fmt: skip
    found: list[str] = []

    async def size(goal: str) -> int:
        brief = Brief(goal, "beginner", 5)
        curriculum = await design_curriculum(
            llm, brief, await analyze_intent(llm, brief, options), options
        )
        return sum(len(module.concepts) for stage in curriculum.stages for module in stage.modules)

    for topic in topics:
        for use in ("", " for data analysis", " for web services", " for games"):
            goal = f"Learn {topic}{use}"
            if asyncio.run(size(goal)) == concepts:
                found.append(goal)
                break
        if len(found) == count:
            return found
    raise RuntimeError(f"found only {len(found)} goals with {concepts} concepts; add topics")


# -- measuring ----------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Samples PgBouncer's pools and clients, pg_stat_activity and the app's RSS."""

    def __init__(self, bouncer: PgBouncer, database_url: str, root_pid: int, t0: float) -> None:
        super().__init__(daemon=True)
        self.bouncer = bouncer
        self.database = make_url(database_url).database
        self.database_url = database_url
        self.root = psutil.Process(root_pid)
        self.t0 = t0
        self.samples: list[Sample] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as pg:
            while not self.stop_event.wait(SAMPLE_EVERY_S):
                with contextlib.suppress(Exception):  # a sample lost beats a lab stopped
                    self.samples.append(self._sample(pg))

    def _sample(self, pg: psycopg.Connection[Any]) -> Sample:
        pools = [p for p in self.bouncer.admin("SHOW POOLS") if p["database"] == self.database]
        clients = self.bouncer.admin("SHOW CLIENTS")
        stats = [
            row for row in self.bouncer.admin("SHOW STATS") if row["database"] == self.database
        ]
        web_wait = max(
            (
                int(c["wait"]) + int(c["wait_us"]) / 1e6
                for c in clients
                if c.get("application_name") == "roadmap:web" and c["state"] == "waiting"
            ),
            default=0.0,
        )
        backends = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.database,),
        ).fetchone()
        processes = [self.root, *self.root.children(recursive=True)]
        rss = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                rss += process.memory_info().rss

        def total(key: str) -> int:
            return sum(int(p[key]) for p in pools)

        return Sample(
            t=time.monotonic() - self.t0,
            sv_active=total("sv_active"),
            sv_total=total("sv_active") + total("sv_idle") + total("sv_used"),
            cl_active=total("cl_active"),
            cl_waiting=total("cl_waiting"),
            maxwait_s=max(
                (int(p["maxwait"]) + int(p["maxwait_us"]) / 1e6 for p in pools), default=0.0
            ),
            web_wait_s=web_wait,
            backends=int(backends[0]) if backends else 0,
            wait_us=sum(int(row["total_wait_time"]) for row in stats),
            xacts=sum(int(row["total_xact_count"]) for row in stats),
            rss_mb=rss / 2**20,
            processes=len(processes),
        )


async def open_loop(
    base_url: str, rate: float, ids: list[str], t0: float, stop: asyncio.Event
) -> list[Request]:
    """Fire requests at a fixed rate whatever the answers take (open loop) until `stop`."""
    results: list[Request] = []
    rng = random.Random(4)
    kinds = [name for weight, name in MIX for _ in range(weight)]
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    timeout = httpx.Timeout(CLIENT_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def one(kind: str, start: float) -> None:
            try:
                if kind == "get roadmap":
                    response = await client.get(f"/api/v1/roadmaps/{rng.choice(ids)}?content=false")
                elif kind == "list":
                    response = await client.get("/api/v1/roadmaps?limit=20")
                elif kind == "health":
                    response = await client.get("/health")
                else:
                    response = await client.post(
                        "/api/v1/roadmaps",
                        json={"goal": "Learn Go for web services", "review": True},
                    )
                ok = response.status_code < 400 and (
                    kind != "health" or response.json()["status"] == "ok"
                )
                outcome = "ok" if ok else f"error {response.status_code}"
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.HTTPError as error:
                outcome = f"error {type(error).__name__}"
            results.append(Request(start - t0, time.monotonic() - start, kind, outcome))

        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            next_at += interval
            task = asyncio.create_task(one(rng.choice(kinds), time.monotonic()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)
    return results


def _api_pool_waits(base_url: str) -> tuple[int, float]:
    """Checkouts that waited > 1 ms and their total seconds, over every API worker's /metrics."""
    by_pid: dict[str, tuple[int, float]] = {}
    with httpx.Client(base_url=base_url, timeout=5) as client:
        for _ in range(40):  # each scrape reaches one uvicorn worker; enough to meet them all
            with contextlib.suppress(httpx.HTTPError):
                text = client.get("/metrics").text
                buckets: dict[str, dict[str, float]] = {}
                for line in text.splitlines():
                    if not line.startswith("loopsafe_db_checkout_wait_seconds"):
                        continue
                    name, value = line.rsplit(" ", 1)
                    labels = dict(
                        part.split("=", 1) for part in name[name.index("{") + 1 : -1].split(",")
                    )
                    entry = buckets.setdefault(labels["pid"], {})
                    if "_bucket" in name and labels["le"] == '"0.001"':
                        entry["fast"] = float(value)
                    elif name.startswith("loopsafe_db_checkout_wait_seconds_count"):
                        entry["count"] = float(value)
                    elif name.startswith("loopsafe_db_checkout_wait_seconds_sum"):
                        entry["sum"] = float(value)
                for pid, entry in buckets.items():
                    by_pid[pid] = (int(entry["count"] - entry["fast"]), entry["sum"])
    return sum(w for w, _ in by_pid.values()), sum(s for _, s in by_pid.values())


# -- one profile ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Serving:
    """The app as `serve` runs it behind a fresh PgBouncer, ready for load."""

    base_url: str
    bouncer: PgBouncer
    serve: ManagedProcess
    budget: str


@contextlib.contextmanager
def serving(
    name: str, overrides: Mapping[str, str], server_pool: int, args: argparse.Namespace,
    database_url: str, redis_url: str, log_dir: Path,
) -> Iterator[Serving]:  # fmt: skip
    """Empty the app's tables, start PgBouncer and `python -m roadmap_app serve` with the profile's
    variables, wait until the API answers and the three workers are ready; stop it all after."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("TRUNCATE roadmaps, execution_logs CASCADE")
    with PgBouncer(
        database_url, default_pool_size=server_pool, max_client_conn=MAX_CLIENTS
    ) as bouncer:
        port = free_port()
        prefix = f"contention{uuid.uuid4().hex[:8]}:"
        env = {
            # The profile alone configures the app: nothing of this shell's own settings leaks in.
            **{k: v for k, v in os.environ.items() if not k.startswith(APP_VARIABLES)},
            "DATABASE_URL": bouncer.url,
            "DATABASE_POOLER": "transaction",
            "REDIS_URL": redis_url,
            "ROADMAP_KEY_PREFIX": prefix,
            "LLM_PROVIDER": "offline",
            "LLM_LATENCY_MS": str(args.latency_ms),
            "LLM_JITTER_MS": str(round(args.latency_ms * 0.3)),
            "LLM_CONCURRENCY": str(LLM_CONCURRENCY),
            "LLM_TIMEOUT_S": "30",
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_MAX_CONNECTIONS": str(server_pool),
            **overrides,
        }
        if env.pop("LAB_ELASTIC_PLAN", None):
            env["LOOPSAFE_BUDGET_PLAN"] = json.dumps(
                {"max_connections": server_pool, "reserve": 0, "ledger": redis_url,
                 "name": prefix.rstrip(":"), "roles": ELASTIC_ROLES}
            )  # fmt: skip
        budget = _budget_text(env)
        serve = ManagedProcess(
            name, [sys.executable, "-m", "roadmap_app", "serve"], env=env,
            log_path=log_dir / f"{name}.log",
        ).start()  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{base_url}/health", timeout=180, process=serve)
            deadline = time.monotonic() + 120
            while serve.log_text().count(" ready.") < 3 and time.monotonic() < deadline:
                time.sleep(0.5)
            yield Serving(base_url, bouncer, serve, budget)
        finally:
            serve.stop(timeout=30)


def run_profile(
    name: str, overrides: dict[str, str], server_pool: int, args: argparse.Namespace,
    database_url: str, redis_url: str, goals: list[str], log_dir: Path,
) -> Run:  # fmt: skip
    with serving(name, overrides, server_pool, args, database_url, redis_url, log_dir) as app:
        run = asyncio.run(
            _measure(
                name, args, app.base_url, app.bouncer, database_url, app.serve, goals, app.budget
            )
        )
        log = app.serve.log_text()
    run.unserved = len(re.findall(r"PoolExhaustedError|QueuePool limit", log))
    for event in re.findall(r"loopsafe\.db\.ledger_\w+", log):
        run.ledger_events[event] = run.ledger_events.get(event, 0) + 1
    return run


# -- 429s avoided ---------------------------------------------------------------------------------

# (label, variables on top of the `loopsafe` profile): the deployment-wide limit, and the limit
# each process kept to itself before loopsafe.llm (the seed's 429s).
RATE_LIMIT_CONFIGS: tuple[tuple[str, dict[str, str]], ...] = (
    ("loopsafe: deployment-wide limit", {}),
    ("per-process limit", {"LLM_LIMIT_SCOPE": "process"}),
)


@dataclasses.dataclass
class RateLimitRun:
    label: str
    cap: int
    roadmaps: int
    completed: int
    failed: int
    concepts: int
    failed_429: int
    failed_other: int
    served: int
    rejected: int
    max_in_flight: int
    seconds: float
    content_processes: int


def capped_provider(cap: int, latency_ms: int, log_dir: Path) -> AbstractContextManager[str]:
    """The app's tests' fake OpenAI server, answering 429 above `cap` calls in flight; its URL."""
    return fake_openai(
        log_dir / "fake-openai.log",
        ready_within=60,
        FAKE_OPENAI_MAX_CONCURRENCY=str(cap),
        FAKE_OPENAI_LATENCY_MS=str(latency_ms),
    )


def run_rate_limited(
    label: str, overrides: Mapping[str, str], args: argparse.Namespace, database_url: str,
    redis_url: str, goals: list[str], log_dir: Path,
) -> RateLimitRun:  # fmt: skip
    """K roadmaps through the capped provider, all content jobs at once; 429s and failures."""
    with capped_provider(args.provider_cap, args.provider_latency_ms, log_dir) as provider:
        env = {
            **PROFILES["loopsafe"],
            # The API is not measured here: one API worker, and a content process per roadmap.
            "WEB_CONCURRENCY": "1",
            "CELERY_WORKFLOW_CONCURRENCY": "2",
            "CELERY_LOGS_CONCURRENCY": "1",
            "CELERY_CONTENT_CONCURRENCY": str(max(2, len(goals))),
            "LLM_PROVIDER": "openai",
            "LLM_BASE_URL": provider,
            "LLM_API_KEY": "bench",
            "LLM_CONCURRENCY": str(args.provider_cap),
            **overrides,
        }
        name = f"429 {label}"
        with serving(
            name, env, args.server_pool, args, database_url, redis_url, log_dir
        ) as app:  # fmt: skip
            layout = Layout.from_env(env)
            content = next(w for w in layout.workers if w.queue == "content")
            processes = content.concurrency if layout.pool == "prefork" else 1
            ids = asyncio.run(_held_for_review(app.base_url, goals, app.serve, name))
            before = httpx.get(f"{provider}/stats", timeout=10).json()
            start = time.monotonic()
            with httpx.Client(base_url=app.base_url, timeout=30) as client:
                for roadmap_id in ids:
                    client.post(
                        f"/api/v1/roadmaps/{roadmap_id}/review", json={"approve": True}
                    ).raise_for_status()
            outcome = _wait_finished(database_url, ids, args.max_generation)
            seconds = time.monotonic() - start
            after = httpx.get(f"{provider}/stats", timeout=10).json()
    return RateLimitRun(
        label=label,
        cap=args.provider_cap,
        roadmaps=len(ids),
        seconds=seconds,
        served=after["served"] - before["served"],
        rejected=after["rejected"] - before["rejected"],
        max_in_flight=after["max_in_flight"],
        content_processes=processes,
        **outcome,
    )


async def _held_for_review(
    base_url: str, goals: list[str], serve: ManagedProcess, name: str
) -> list[str]:
    """Create a roadmap per goal, held at human review (curriculum designed, no content yet)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        ids = []
        for goal in goals:
            response = await client.post("/api/v1/roadmaps", json={"goal": goal, "review": True})
            response.raise_for_status()
            ids.append(response.json()["task_id"])
        deadline = time.monotonic() + 120  # all of them: a starved API must not hold the lab
        for roadmap_id in ids:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TimeoutException):
                    response = await client.get(f"/api/v1/roadmaps/{roadmap_id}?content=false")
                    if response.json().get("status") == "human_review_pending":
                        break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(
                    f"{name}: roadmap {roadmap_id} never reached review:\n{serve.tail()}"
                )
    return ids


def _wait_finished(database_url: str, ids: list[str], limit: float) -> dict[str, int]:
    """Poll until every roadmap is completed or failed (or `limit` s): roadmaps, concepts saved,
    and the concepts that failed for good, by a 429 or otherwise."""
    deadline = time.monotonic() + limit
    with psycopg.connect(database_url, autocommit=True) as pg:
        while True:
            rows = pg.execute(
                "SELECT status, failed_concepts, (SELECT count(*) FROM concept_content c "
                "WHERE c.roadmap_id = r.id) FROM roadmaps r WHERE id::text = ANY(%s)",
                (ids,),
            ).fetchall()
            statuses = [row[0] for row in rows]
            done = sum(status in ("completed", "failed") for status in statuses)
            if done == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    reasons = [str(f.get("reason", "")) for row in rows for f in row[1]]
    by_429 = sum("429" in reason or "RateLimit" in reason for reason in reasons)
    return {
        "completed": statuses.count("completed"),
        "failed": statuses.count("failed"),
        "concepts": sum(int(row[2]) for row in rows),
        "failed_429": by_429,
        "failed_other": len(reasons) - by_429,
    }


RATE_LIMIT_COLUMNS = [
    "configuration",
    "provider cap (calls in flight)",
    "429s seen",
    "concepts failed by 429",
    "other failed concepts",
    "roadmaps completed / failed",
    "peak calls in flight at the provider",
    "calls served",
    "content generation time",
]


def _rate_limit_row(run: RateLimitRun) -> list[object]:
    return [
        run.label,
        run.cap,
        run.rejected,
        run.failed_429,
        run.failed_other,
        f"{run.completed} / {run.failed} of {run.roadmaps}",
        run.max_in_flight,
        run.served,
        f"{run.seconds:.1f} s",
    ]


def _fits(overrides: dict[str, str], server_pool: int) -> bool:
    """Whether `serve` can plan this profile's layout within `server_pool` connections."""
    env = {**overrides, "DATABASE_MAX_CONNECTIONS": str(server_pool)}
    try:
        Layout.from_env(env).plan(Settings.from_env(env))
    except ValueError:
        return False
    return True


def _budget_text(env: dict[str, str]) -> str:
    settings = Settings.from_env(env)
    if settings.budget_plan is not None and "LOOPSAFE_BUDGET_PLAN" in env:
        roles = json.loads(env["LOOPSAFE_BUDGET_PLAN"])["roles"]
        return f"elastic plan: {settings.budget_plan.usable} usable, " + ", ".join(
            f"{role} " + " ".join(f"{k} {v}" for k, v in spec.items())
            for role, spec in roles.items()
        )
    layout = Layout.from_env(env)
    per_queue = {w.queue: w.concurrency if layout.pool == "prefork" else 1 for w in layout.workers}
    processes = layout.web_workers + sum(per_queue.values())
    if settings.database_pool_size is not None:
        per = settings.database_pool_size + settings.database_max_overflow
        return f"none: {processes} processes × {per} = {processes * per} client connections"
    plan = layout.plan(settings)
    shares = ", ".join(f"{role} {plan.budget_for(role).per_process}" for role in plan.roles)
    shape = ""
    if layout.pool == "threads":
        loops = "one loop" if settings.celery_worker_loop == "process" else "a loop per thread"
        shape = f"; workers: one threads-pool process per queue, {loops} each"
    return f"plan: {plan.total} of {plan.usable} usable ({shares} per process{shape})"


async def _measure(
    name: str, args: argparse.Namespace, base_url: str, bouncer: PgBouncer, database_url: str,
    serve: ManagedProcess, goals: list[str], budget: str,
) -> Run:  # fmt: skip
    # The reads need roadmaps to read: the K that will be generated, created now and held for
    # review, so the idle window reads the same rows the generation window does.
    ids = await _held_for_review(base_url, goals, serve, name)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        t0 = time.monotonic()
        sampler = Sampler(bouncer, database_url, serve.pid, t0)
        sampler.start()
        stop = asyncio.Event()
        load = asyncio.create_task(open_loop(base_url, args.rate, ids, t0, stop))
        # The first requests meet cold API workers (first connections, imports): not measured.
        await asyncio.sleep(args.warmup + args.idle)
        gen_start = time.monotonic() - t0
        # Approving the reviews starts content generation for all K roadmaps at once.
        for roadmap_id in ids:
            approve = await client.post(
                f"/api/v1/roadmaps/{roadmap_id}/review", json={"approve": True}
            )
            approve.raise_for_status()
        concepts, completed = await _wait_generated(database_url, ids, args.max_generation)
        gen_end = time.monotonic() - t0
        await asyncio.sleep(args.tail)
        stop.set()
        requests = await load
    sampler.stop_event.set()
    sampler.join()
    return Run(
        profile=name,
        requests=requests,
        samples=sampler.samples,
        gen_start=gen_start,
        gen_end=gen_end,
        concepts=concepts,
        ideal_s=args.ideal_s,
        budget=budget,
        pool_waits=await asyncio.to_thread(_api_pool_waits, base_url),
        roadmaps=len(ids),
        completed=completed,
        warmup=args.warmup,
    )


async def llm_bound_seconds(roadmaps: int, concepts: int, latency_ms: int) -> float:
    """The LLM-bound ideal, measured: the same calls (3 per concept, latency ± 30 % as the offline
    provider draws it, LLM_CONCURRENCY concepts in flight per roadmap, every roadmap at once) with
    nothing else — no database, broker or process — in this process. Mean of 5 draws."""
    jitter = latency_ms * 0.3

    async def roadmap(rng: random.Random) -> None:
        todo = iter(range(concepts))

        async def producer() -> None:
            for _ in todo:
                for _ in range(3):
                    await asyncio.sleep((latency_ms + rng.uniform(-jitter, jitter)) / 1000)

        await asyncio.gather(*(producer() for _ in range(LLM_CONCURRENCY)))

    async def one(seed: int) -> float:
        rng = random.Random(seed)
        start = time.monotonic()
        await asyncio.gather(*(roadmap(rng) for _ in range(roadmaps)))
        return time.monotonic() - start

    return statistics.mean(await asyncio.gather(*(one(seed) for seed in range(5))))


async def _wait_generated(database_url: str, ids: list[str], limit: float) -> tuple[int, int]:
    """Poll the database until every roadmap is completed (or `limit` s); (concepts, completed)."""
    deadline = time.monotonic() + limit
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as pg:
        while True:
            row = await (
                await pg.execute(
                    "SELECT (SELECT count(*) FROM concepts WHERE roadmap_id::text = ANY(%(ids)s)), "
                    "(SELECT count(*) FROM roadmaps WHERE id::text = ANY(%(ids)s) "
                    "AND status = 'completed')",
                    {"ids": ids},
                )
            ).fetchone()
            assert row is not None
            concepts, completed = int(row[0]), int(row[1])
            if completed == len(ids) or time.monotonic() > deadline:
                return concepts, completed
            await asyncio.sleep(0.25)


# -- report ---------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _latency(requests: list[Request]) -> dict[str, float]:
    answered = [r.latency * 1000 for r in requests if r.outcome != "timeout"]
    return {
        "p50": _percentile(answered, 0.50),
        "p95": _percentile(answered, 0.95),
        "p99": _percentile(answered, 0.99),
        "errors": sum(r.outcome.startswith("error") for r in requests),
        "timeouts": sum(r.outcome == "timeout" for r in requests),
        "n": len(requests),
    }


def _row(run: Run) -> list[object]:
    idle, gen = _latency(run.window(False)), _latency(run.window(True))
    during = [s for s in run.samples if run.gen_start <= s.t <= run.gen_end] or run.samples
    took = run.gen_end - run.gen_start
    return [
        run.profile,
        f"{idle['p50']:.0f} / {idle['p95']:.0f} / {idle['p99']:.0f}",
        f"{idle['errors']:.0f} / {idle['timeouts']:.0f} of {idle['n']:.0f}",
        f"{gen['p50']:.0f} / {gen['p95']:.0f} / {gen['p99']:.0f}",
        f"{gen['errors']:.0f} / {gen['timeouts']:.0f} of {gen['n']:.0f}",
        f"{gen['p99'] / idle['p99']:.1f}×" if idle["p99"] > 0 else "n/a",
        f"{max((s.sv_active for s in during), default=0)} / {max((s.sv_total for s in run.samples), default=0)}",
        f"{max((s.cl_active + s.cl_waiting for s in run.samples), default=0)}",
        f"{max((s.cl_waiting for s in during), default=0)}",
        f"{max((s.maxwait_s for s in during), default=0):.1f} / {max((s.web_wait_s for s in during), default=0):.2f}",
        f"{max((s.backends for s in run.samples), default=0)}",
        _mean_wait(during),
        f"{run.pool_waits[0]} ({run.pool_waits[1]:.1f} s)",
        f"{took:.1f} s = {100 * run.ideal_s / took:.0f} %"
        if run.completed == run.roadmaps
        else f"unfinished: {run.completed}/{run.roadmaps} after {took:.0f} s",
        f"{max((s.rss_mb for s in run.samples), default=0):.0f} MB / {max((s.processes for s in run.samples), default=0)}",
    ]


COLUMNS = [
    "profile",
    "idle p50/p95/p99 ms",
    "idle errors/timeouts",
    "generation p50/p95/p99 ms",
    "generation errors/timeouts",
    "p99 gen/idle",
    "server conns: peak sv_active (gen) / open",
    "peak client conns",
    "peak cl_waiting",
    "maxwait s: all / API",
    "peak pg backends",
    "mean pooler wait per transaction (gen)",
    "API pool waits > 1 ms",
    "generation time = % of LLM ideal",
    "RSS / processes",
]


def _mean_wait(samples: list[Sample]) -> str:
    """Mean client wait for a server connection per transaction over `samples` (SHOW STATS)."""
    if len(samples) < 2 or samples[-1].xacts == samples[0].xacts:
        return "n/a"
    waited = (samples[-1].wait_us - samples[0].wait_us) / 1000
    return f"{waited / (samples[-1].xacts - samples[0].xacts):.1f} ms"


def _goals(run: Run, budget_total: int | None) -> list[str]:
    idle, gen = _latency(run.window(False)), _latency(run.window(True))
    during = [s for s in run.samples if run.gen_start <= s.t <= run.gen_end] or run.samples
    errors = gen["errors"] + gen["timeouts"] + idle["errors"] + idle["timeouts"]
    peak_clients = max((s.cl_active + s.cl_waiting for s in run.samples), default=0)
    api_wait = max((s.web_wait_s for s in during), default=0.0)
    took = run.gen_end - run.gen_start
    share = 100 * run.ideal_s / took if took > 0 else 0.0

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [
        f"- 0 API errors: {mark(errors == 0)} ({errors:.0f} errors + timeouts)",
        f"- API p99 during generation ≤ 2× idle p99: {mark(gen['p99'] <= 2 * idle['p99'])} "
        f"({gen['p99']:.0f} ms vs {idle['p99']:.0f} ms)",
    ]
    if run.budget.startswith("elastic plan: ") and budget_total is not None:
        # Client connections to the pooler are not the limit here (a lease is per transaction):
        # in flight = servers in use + clients waiting for one at the pooler.
        # A client waits at the pooler briefly while PgBouncer logs a new server connection in,
        # so waiting alone is no excess; servers in use plus waiting clients above it would be.
        in_flight = max((s.sv_active + s.cl_waiting for s in run.samples), default=0)
        peak_server = max((s.sv_active for s in run.samples), default=0)
        lines.append(
            f"- transactions in flight never above the limit ({budget_total}): "
            f"{mark(in_flight <= budget_total)} (peak sv_active + cl_waiting {in_flight}; "
            f"peak sv_active {peak_server})"
        )
        lines.append(
            f"- every process served: {mark(run.unserved == 0 and run.completed == run.roadmaps)} "
            f"({run.completed} of {run.roadmaps} roadmaps completed, {run.unserved} pool timeouts "
            f"logged by the {_processes(run.budget)} processes; ledger events: "
            f"{', '.join(f'{k} × {v}' for k, v in sorted(run.ledger_events.items())) or 'none'})"
        )
    elif budget_total is not None:
        peak_server = max((s.sv_active for s in run.samples), default=0)
        lines.append(
            f"- server connections never above the budget ({budget_total}): "
            f"{mark(peak_server <= budget_total and peak_clients <= budget_total)} (peak sv_active "
            f"{peak_server}, peak client connections {peak_clients})"
        )
    lines += [
        f"- API maxwait at the pooler ≈ 0: {mark(api_wait < 0.05)} ({api_wait:.2f} s)",
        f"- ≥ 90 % of the LLM-bound ideal: {mark(share >= 90)} ({share:.0f} %, "
        f"{took:.1f} s vs {run.ideal_s:.1f} s)",
    ]
    return lines


def chart(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 2, figsize=(13, 3.2 * len(runs)), squeeze=False)
    for (latency_ax, pool_ax), run in zip(axes, runs, strict=True):
        for ax in (latency_ax, pool_ax):
            ax.axvspan(0, run.warmup, color="#dddddd", alpha=0.6, label="warm-up (not measured)")
            ax.axvspan(run.gen_start, run.gen_end, color="#f3d9a4", alpha=0.6, label="generation")
        ok = [r for r in run.requests if r.outcome == "ok"]
        bad = [r for r in run.requests if r.outcome != "ok"]
        latency_ax.scatter(
            [r.start for r in ok], [r.latency * 1000 for r in ok], s=3, color="#3b6ea5", label="ok"
        )
        latency_ax.scatter(
            [r.start for r in bad],
            [r.latency * 1000 for r in bad],
            s=8,
            color="#c0392b",
            marker="x",
            label="error / timeout",
        )
        latency_ax.set_yscale("log")
        latency_ax.set_ylabel("API latency (ms)")
        latency_ax.set_title(f"{run.profile}: API latency over time")
        latency_ax.legend(loc="upper left", fontsize=7)
        t = [s.t for s in run.samples]
        pool_ax.plot(t, [s.sv_active for s in run.samples], label="sv_active", color="#3b6ea5")
        pool_ax.plot(t, [s.cl_waiting for s in run.samples], label="cl_waiting", color="#c0392b")
        pool_ax.plot(
            t, [s.cl_active for s in run.samples], label="cl_active", color="#7f8c8d", lw=0.8
        )
        pool_ax.set_title(f"{run.profile}: PgBouncer pool")
        pool_ax.set_ylabel("connections")
        pool_ax.legend(loc="upper left", fontsize=7)
        for ax in (latency_ax, pool_ax):
            ax.set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def rate_limit_chart(limited: list[RateLimitRun], path: Path) -> None:
    """Bars per configuration: 429s seen, concepts failed by 429, roadmaps completed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 0.6 * len(limited) + 2.2))
    labels = [run.label for run in limited][::-1]
    panels = (
        ("429s seen", [run.rejected for run in limited], "#c0392b"),
        ("concepts failed by 429", [run.failed_429 for run in limited], "#e67e22"),
        ("roadmaps completed", [run.completed for run in limited], "#3b6ea5"),
    )
    for ax, (title, values, color) in zip(axes, panels, strict=True):
        ax.barh(labels, values[::-1], color=color)
        for y, value in enumerate(values[::-1]):
            ax.text(value, y, f" {value}", va="center")
        ax.set_title(title)
        ax.margins(x=0.2)
    for ax in axes[1:]:
        ax.set_yticks([])
    first = limited[0]
    fig.suptitle(
        f"{first.roadmaps} roadmaps through a provider that answers 429 above {first.cap} calls "
        "in flight",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(
    runs: list[Run], limited: list[RateLimitRun], args: argparse.Namespace, name: str,
    db_bound: DbBound | None = None, failed: list[tuple[str, str]] | None = None,
) -> None:  # fmt: skip
    rows = [_row(run) for run in runs]
    others = _other_load()
    notes = [
        f"K = {args.roadmaps} roadmaps × {args.concepts} concepts generated at once after a "
        f"{args.idle:g} s idle window; open-loop client at {args.rate:g} requests/s "
        f"({', '.join(f'{w} % {n}' for w, n in MIX)}), {CLIENT_TIMEOUT_S:g} s timeout; offline LLM "
        f"{args.latency_ms} ms ± 30 % per call, {LLM_CONCURRENCY} concepts in flight per roadmap. "
        f"PgBouncer {_pgbouncer_version()} in transaction mode, default_pool_size = "
        f"{args.server_pool} (rows marked 'server pool N': N), max_client_conn = {MAX_CLIENTS}. "
        "Every process started by `python -m roadmap_app serve`; the first "
        f"{args.warmup:g} s of load are not measured.",
        "",
        "Latencies are of answered requests; errors are HTTP ≥ 400 (a 503 from an exhausted pool "
        f"counts) or /health not ok. The LLM-bound ideal ({args.ideal_s:.1f} s) is measured in the "
        "same run: the same LLM calls with the same latency draws and concurrency, all roadmaps at "
        "once, and nothing else (no database, broker or processes). Server connections are "
        "PgBouncer's (sv_active in use; open = active + idle + used); client connections are the "
        "app's connections to PgBouncer (cl_active + cl_waiting); maxwait is PgBouncer's longest "
        "client wait, overall and for API connections (SHOW CLIENTS, application_name "
        "roadmap:web), and the mean wait per transaction comes from SHOW STATS. API pool waits "
        "(client side, before PgBouncer) come from each API worker's /metrics.",
        "",
        "Budgets: " + "; ".join(f"{run.profile}: {run.budget}" for run in runs) + ". Where the "
        "seed's 18 processes cannot each get a connection from the plan (fewer than 20 server "
        "connections: `python -m loopsafe budget` refuses it and says what fits), loopsafe runs "
        "2 API workers and workflow / logs -c 2 instead.",
        "",
        f"Machine: {os.cpu_count()} cores, shared with other work; `uptime` load average (1, 5, "
        f"15 min) at the start {_loads(args.load_at_start)}, at the end {_loads(os.getloadavg())};"
        f" other work running at the end: {others}.",
    ]
    for run in runs:
        if run.profile.startswith("loopsafe"):
            total = _plan_total(run.budget)
            notes += ["", f"Goals for `{run.profile}`:", *_goals(run, total)]
    for label, error in failed or ():
        notes += ["", f"`{label}` did not finish: {error} (its goals: NOT met)."]
    if db_bound is not None:
        notes += ["", *_db_bound_section(db_bound, args, name)]
    if limited:
        notes += ["", *_rate_limit_section(limited, args)]
        notes += ["", f"![429s and failed concepts by LLM limit]({name}-429.png)"]
        rate_limit_chart(limited, RESULTS / f"{name}-429.png")
    if runs:
        notes += ["", f"![API latency and PgBouncer pool over time]({name}.png)"]
        chart(runs, RESULTS / f"{name}.png")
    write_results(
        name,
        "Content generation vs the web API behind PgBouncer (seed-004 lab)",
        COLUMNS,
        rows,
        notes="\n".join(notes),
    )
    summary = [_summary(run) for run in runs]
    summary += [{"rate_limit": dataclasses.asdict(run)} for run in limited]
    if db_bound is not None:
        summary += [_db_bound.summary(result) for result in db_bound.all()]
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")


def _loads(loads: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in loads)


def _rate_limit_section(limited: list[RateLimitRun], args: argparse.Namespace) -> list[str]:
    """The 429s-avoided table and what it measured, as markdown lines."""
    first = limited[0]
    lines = [
        "## 429s avoided: one LLM limit for the whole deployment",
        "",
        f"The app's OpenAI provider against a fake OpenAI-compatible server (the app's "
        f"`tests/fake_openai_server.py`) that answers 429 with `Retry-After: 1` while more than "
        f"{args.provider_cap} calls are in flight, each call taking {args.provider_latency_ms} ms. "
        f"K = {first.roadmaps} roadmaps × {args.concepts} concepts, their content jobs started at "
        f"once on the `loopsafe` settings with {first.content_processes} content worker processes (prefork"
        " children; 1 API worker, workflow -c 2, logs -c 1: the API is not measured here), "
        f"LLM_CONCURRENCY = {args.provider_cap} (concepts in flight per roadmap and the limit), "
        "LLM_RETRIES = 2 (the app's default: three attempts per call). With the deployment-wide "
        "limit every process shares one `loopsafe.llm` limit through Redis, and a 429's "
        "Retry-After pauses them all; with a per-process limit (`LLM_LIMIT_SCOPE=process`, what "
        "the seed's processes did) each keeps LLM_CONCURRENCY to itself. 429s seen are the "
        "server's refusals during content generation; a concept fails by 429 when its last "
        "attempt met one; peak calls in flight is the server's (refused calls included), over the whole run.",
        "",
        "| " + " | ".join(RATE_LIMIT_COLUMNS) + " |",
        "|" + "---|" * len(RATE_LIMIT_COLUMNS),
        *("| " + " | ".join(str(cell) for cell in _rate_limit_row(run)) + " |" for run in limited),
    ]
    shared = next((run for run in limited if run.label == RATE_LIMIT_CONFIGS[0][0]), None)
    if shared is not None:
        ok = shared.failed_429 == 0 and shared.completed == shared.roadmaps
        lines += [
            "",
            f"Goal: K roadmaps finish with zero 429-failed concepts under the deployment-wide "
            f"limit: {'met' if ok else 'NOT met'} ({shared.failed_429} concepts failed by 429, "
            f"{shared.completed} of {shared.roadmaps} roadmaps completed, {shared.rejected} 429s "
            "seen).",
        ]
    return lines


def _summary(run: Run) -> dict[str, Any]:
    return {
        "profile": run.profile,
        "idle": _latency(run.window(False)),
        "generation": _latency(run.window(True)),
        "generation_s": run.gen_end - run.gen_start,
        "ideal_s": run.ideal_s,
        "peak_sv_active": max((s.sv_active for s in run.samples), default=0),
        "peak_cl_waiting": max((s.cl_waiting for s in run.samples), default=0),
        "max_api_wait_s": max((s.web_wait_s for s in run.samples), default=0.0),
        "budget": run.budget,
    }


def _processes(budget: str) -> str:
    """The seed layout's process count (the elastic profile always runs the seed's layout)."""
    layout = Layout.from_env(PROFILES[ELASTIC])
    return str(layout.web_workers + sum(w.concurrency for w in layout.workers))


def _plan_total(budget: str) -> int | None:
    if budget.startswith("elastic plan: "):
        return int(budget.split()[2])
    if not budget.startswith("plan: "):
        return None
    return int(budget.split()[1])


def _pgbouncer_version() -> str:
    import subprocess

    from loopsafe._servers import _pgbouncer_binary

    binary = _pgbouncer_binary()
    if binary is None:
        return "(missing)"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return output.split()[1] if output.split() else "?"


def _other_load() -> str:
    """What else used the CPU on this shared machine (process names and CPU time), for honesty."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    busy: dict[str, float] = {}
    for process in psutil.process_iter(["name", "cpu_percent"]):
        if process.pid in mine:
            continue
        with contextlib.suppress(psutil.Error):
            busy[process.info["name"]] = busy.get(process.info["name"], 0) + process.cpu_percent(
                0.1
            )
    top = sorted(((cpu, name) for name, cpu in busy.items() if cpu > 5), reverse=True)[:6]
    return ", ".join(f"{name} {cpu:.0f} % CPU" for cpu, name in top) or "nothing notable"


# -- the DB-bound profile -------------------------------------------------------------------------


@dataclasses.dataclass
class DbBound:
    rows: list[_db_bound.RowResult]
    autoscale: _db_bound.RowResult | None
    faults: _db_bound.RowResult | None
    skipped: str  # why elastic rows did not run, or ""

    def all(self) -> list[_db_bound.RowResult]:
        return [*self.rows, *(r for r in (self.autoscale, self.faults) if r is not None)]


def run_db_bound(
    rows: list[str], args: argparse.Namespace, database_url: str, logs: Path
) -> DbBound | None:
    """The DB-bound rows, autoscaling and faults, on the lab's own Redis (restartable)."""
    if not rows and not args.autoscale and not args.faults:
        return None
    skipped = ""
    if not _db_bound.elastic_available():
        skipped = "this loopsafe has no elastic roles (Role without processes)"
        rows = [row for row in rows if not row.startswith("elastic")]
        args.autoscale = args.faults = False
    with EmbeddedRedis(executable=shutil.which("redis-server")) as redis:
        lab = _db_bound.Lab(database_url, redis, logs / "db-bound")
        lab.directory.mkdir(parents=True, exist_ok=True)
        lab.create_tables()
        try:
            results = []
            for row in rows:
                print(f"== DB-bound: {row}", file=sys.stderr, flush=True)
                results.append(_db_bound.run_row(lab, row, args.db_idle, args.db_load))
            autoscale = faults = None
            if args.autoscale:
                print("== DB-bound: autoscaling", file=sys.stderr, flush=True)
                autoscale = _db_bound.run_autoscale(lab, args.autoscale_phase)
            if args.faults:
                print("== DB-bound: faults", file=sys.stderr, flush=True)
                faults = _db_bound.run_faults(lab, steady_s=8.0, outage_s=8.0)
        finally:
            lab.drop_tables()
    return DbBound(results, autoscale, faults, skipped)


def _db_bound_section(db: DbBound, args: argparse.Namespace, name: str) -> list[str]:
    """The DB-bound profile's tables, goals and chart, as markdown lines."""
    d = _db_bound
    by_row = {result.row: result for result in db.rows}
    unprotected = by_row.get("unprotected")
    base = unprotected.rate("load") if unprotected is not None else None
    lines = [
        "## DB-bound: workers that alone saturate every server connection",
        "",
        f"{d.WORKER_PROCESSES} worker processes × {d.WRITERS} concurrent write transactions, each "
        f"holding its connection {d.HOLD_S * 1000:.0f} ms (an INSERT, then the wait inside the "
        f"transaction); {d.API_PROCESSES} API processes issuing {d.API_RATE:g} short reads/s in "
        f"all (open loop, {d.API_TIMEOUT_S:g} s timeout), each through `Database.session()`. "
        f"Small purpose-built processes (`benchmarks/_db_bound.py`), not the roadmap app: only "
        f"the contention pattern matters here. PgBouncer {_pgbouncer_version()} in transaction "
        f"mode with {d.LIMIT} server connections; the elastic rows give PgBouncer "
        f"{d.LIMIT + d.ELASTIC_SLACK} so that only loopsafe keeps the limit of {d.LIMIT} (an "
        "excess would show in sv_active). Windows: the API alone for "
        f"{args.db_idle:g} s (after a 3 s warm-up), then the workers start and, after a 2 s "
        f"ramp, {args.db_load:g} s under load. Worker writes/s are the rows written in the load "
        "window; server connections are sampled every "
        f"{d.SAMPLE_EVERY_S:g} s from PgBouncer (SHOW POOLS, SHOW CLIENTS) and pg_stat_activity.",
        "",
        "| " + " | ".join(d.COLUMNS) + " |",
        "|" + "---|" * len(d.COLUMNS),
        *("| " + " | ".join(str(c) for c in d.row_cells(r, base)) + " |" for r in db.rows),
    ]
    if db.skipped:
        lines += ["", f"Elastic rows, autoscaling and faults not run: {db.skipped}."]
    elastic = by_row.get("elastic")
    if elastic is not None:
        lines += ["", "Goals for the elastic row:", *d.row_goals(elastic, unprotected)]
    if db.autoscale is not None:
        lines += [
            "",
            f"### Autoscaling: {db.autoscale.row}",
            "",
            f"The elastic plan above, never changed; the API throughout, {args.autoscale_phase:g} s "
            "per phase; the extra workers are new processes that join the ledger when they "
            "start and leave it on SIGTERM (their transactions finish first).",
            "",
            *d.phases_table(db.autoscale),
            "",
            *d.autoscale_goals(db.autoscale),
        ]
    if db.faults is not None:
        lines += [
            "",
            f"### Faults: {db.faults.row}",
            "",
            "The elastic row's layout; after a steady window the worker holding the most server "
            "connections is SIGKILLed (no release: its leases stay in the ledger until its "
            "heartbeat expires); the time until the remaining workers hold as many server "
            "connections as the workers' median before the kill is its share coming back. Then "
            "the lab's own Redis (the ledger's; never a shared one) is stopped for 8 s and "
            "started again, empty.",
            "",
            *d.phases_table(db.faults),
            "",
            *d.fault_goals(db.faults),
        ]
    charted = db.all()
    if charted:
        d.chart(charted, RESULTS / f"{name}-db-bound.png")
        lines += ["", f"![DB-bound: API latency and server connections]({name}-db-bound.png)"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI (about 2 minutes)")
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--roadmaps", type=int, default=6)
    parser.add_argument("--concepts", type=int, default=30)
    parser.add_argument("--rate", type=float, default=20.0, help="API requests per second")
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--tail", type=float, default=3.0, help="seconds measured after generation")
    parser.add_argument("--latency-ms", type=int, default=1000, help="offline LLM latency per call")
    parser.add_argument(
        "--server-pool", type=int, default=SERVER_POOL, help="PgBouncer default_pool_size"
    )
    parser.add_argument(
        "--starvation-pools",
        default="20,15",
        help="also run seed-before and loopsafe with these few server connections ('' for none)",
    )
    parser.add_argument(
        "--max-generation", type=float, default=300.0, help="give up waiting after this many s"
    )
    parser.add_argument(
        "--rate-limit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure 429s avoided against a provider capped at --provider-cap calls",
    )
    parser.add_argument(
        "--provider-cap", type=int, default=12, help="calls in flight the fake provider accepts"
    )
    parser.add_argument(
        "--provider-latency-ms", type=int, default=500, help="the fake provider's time per call"
    )
    parser.add_argument(
        "--db-bound",
        default=",".join(_db_bound.ROWS),
        help="rows of the DB-bound profile to run ('' for none)",
    )
    parser.add_argument("--db-idle", type=float, default=15.0, help="DB-bound idle window, s")
    parser.add_argument("--db-load", type=float, default=30.0, help="DB-bound load window, s")
    parser.add_argument(
        "--autoscale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DB-bound elastic workers 2 → 12 → 2 processes during one run",
    )
    parser.add_argument("--autoscale-phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument(
        "--faults",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="DB-bound elastic: SIGKILL a worker, then restart the ledger's Redis",
    )
    parser.add_argument("--name", default="contention", help="results/<name>.md/.png")
    args = parser.parse_args()
    args.load_at_start = os.getloadavg()
    args.warmup = WARMUP_S
    if args.quick:
        args.roadmaps, args.idle, args.tail, args.latency_ms = 2, 4.0, 1.0, 300
        args.warmup = 2.0
        args.max_generation, args.starvation_pools = 90.0, ""
        args.provider_latency_ms = 300
        if "--profiles" not in sys.argv:
            args.profiles = f"seed-before,loopsafe,{SHARED_LOOP}"
        if "--db-bound" not in sys.argv:
            args.db_bound = "unprotected,elastic"
        args.db_idle, args.db_load, args.autoscale, args.faults = 5.0, 10.0, False, False
        if args.name == "contention":
            args.name = "contention-quick"
    wanted = list(dict.fromkeys(p.strip() for p in args.profiles.split(",") if p.strip()))
    unknown = set(wanted) - set(PROFILES)
    if unknown:
        parser.error(f"unknown profiles: {', '.join(sorted(unknown))}")
    db_rows = list(dict.fromkeys(r.strip() for r in args.db_bound.split(",") if r.strip()))
    if set(db_rows) - set(_db_bound.ROWS):
        parser.error(
            f"unknown DB-bound rows: {', '.join(sorted(set(db_rows) - set(_db_bound.ROWS)))}; "
            f"choose from {', '.join(_db_bound.ROWS)}"
        )
    goals = goals_with(args.concepts, args.roadmaps)
    args.ideal_s = asyncio.run(llm_bound_seconds(args.roadmaps, args.concepts, args.latency_ms))
    runs: list[Run] = []
    limited: list[RateLimitRun] = []
    failed: list[tuple[str, str]] = []
    plan = [(profile, args.server_pool) for profile in wanted]
    for pool in (int(n) for n in args.starvation_pools.split(",") if n.strip()):
        plan += [(profile, pool) for profile in STARVATION_PROFILES if profile in wanted]
    with servers() as (database_url, redis_url), tempfile.TemporaryDirectory() as logs:
        migrate_database(database_url)
        # First, so that the DB-bound figures exist even if a later, longer profile fails.
        db_bound = run_db_bound(db_rows, args, database_url, Path(logs))
        for profile, server_pool in plan:
            overrides = PROFILES[profile]
            label = profile
            if profile in PLANNED_BY_SERVE and not _fits(overrides, server_pool):
                overrides = {**overrides, **SMALL_LAYOUT}
                label = f"{profile}, web 2 / workflow 2 / logs 2"
            if server_pool != args.server_pool:
                label = f"{label} (server pool {server_pool})"
            print(f"== {label}", file=sys.stderr, flush=True)
            try:
                runs.append(
                    run_profile(
                        label,
                        overrides,
                        server_pool,
                        args,
                        database_url,
                        redis_url,
                        goals,
                        Path(logs),
                    )
                )
            except Exception as error:
                _print_log(Path(logs) / f"{label}.log")
                if profile != ELASTIC:
                    raise
                # Reported as a row that did not finish (and a failed exit), not a lost lab.
                failed.append((label, f"{type(error).__name__}: {str(error).splitlines()[0]}"))
        for label, variables in RATE_LIMIT_CONFIGS if args.rate_limit else ():
            print(f"== 429 {label}", file=sys.stderr, flush=True)
            try:
                limited.append(
                    run_rate_limited(
                        label, variables, args, database_url, redis_url, goals, Path(logs)
                    )
                )
            except Exception:
                _print_log(Path(logs) / f"429 {label}.log")
                raise
    report(runs, limited, args, args.name, db_bound, failed)
    if failed:
        sys.exit(f"profiles that did not finish: {', '.join(label for label, _ in failed)}")


def _print_log(log: Path) -> None:
    print(log.read_text(errors="replace")[-4000:] if log.exists() else "", file=sys.stderr)


if __name__ == "__main__":
    main()
