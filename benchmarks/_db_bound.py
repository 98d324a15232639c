"""The contention lab's DB-bound profile: workers that alone saturate every server connection.

Small purpose-built processes on `loopsafe.db` behind a real PgBouncer in transaction mode:
API processes issue an open-loop stream of short reads through `Database.session()`, worker
processes run many concurrent write transactions that each hold their connection for a while.
What differs between rows is only how the connection limit is shared (no protection, a static
`BudgetPlan`, PgBouncer's own per-database split, elastic roles through a Redis ledger).

Run as a script, this module is one such child process (configured by ``$LAB_CHILD``, JSON);
imported, it is the harness `bench_contention.py` drives: rows, autoscaling, faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

LIMIT = 12  # the server connections the app may use (PgBouncer's pool in the comparison rows)
API_PROCESSES = 2
WORKER_PROCESSES = 8
WRITERS = 15  # concurrent write transactions per worker process
HOLD_S = 0.15  # how long each write transaction holds its connection
API_RATE = 20.0  # requests/s over all API processes
API_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 0.1
ELASTIC_SLACK = 8  # PgBouncer's pool for elastic rows: LIMIT + this, so only loopsafe holds LIMIT
ROWS = ("unprotected", "static plan", "PgBouncer split", "elastic")


# -- the child processes ------------------------------------------------------------------------


def _budget(config: Mapping[str, Any]) -> Any:
    from loopsafe.db import BudgetPlan

    if config.get("plan") is None:
        return None
    return BudgetPlan.from_mapping(config["plan"]).budget_for(config["role"])


def _database(config: Mapping[str, Any]) -> Any:
    from loopsafe.db import Database

    budget = _budget(config)
    options: dict[str, Any] = {"pool_timeout": 60}
    if budget is None:
        options.update(pool_size=2, max_overflow=2)  # every process alike: the seed's pools
    url = f"{config['url']}?application_name={config['app']}"
    return Database(
        url, name=config["app"], budget=budget, pooler="transaction", engine_options=options
    )


async def _child(config: Mapping[str, Any]) -> dict[str, Any]:
    from sqlalchemy import text

    db = _database(config)
    stop, go = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, go.set)  # the harness's "start the load"
    if config["go_now"]:
        go.set()
    async with db.session() as session:  # connected: ready
        await session.execute(text("SELECT 1"))
    _touch(config["ready"])
    await asyncio.wait(
        [asyncio.ensure_future(go.wait()), asyncio.ensure_future(stop.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    result: dict[str, Any] = {"app": config["app"], "errors": {}}
    errors: dict[str, int] = result["errors"]
    if config["kind"] == "worker":
        insert = text(f"INSERT INTO {config['table']} (worker) VALUES (:worker)")
        writes = 0

        async def writer() -> None:
            nonlocal writes
            while not stop.is_set():
                try:
                    async with db.session() as session:
                        await session.execute(insert, {"worker": config["index"]})
                        await asyncio.sleep(HOLD_S)  # work done while holding the connection
                    writes += 1
                except Exception as error:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                    await asyncio.sleep(0.1)

        writers = [asyncio.ensure_future(writer()) for _ in range(WRITERS)]
        await stop.wait()
        # A worker's warm shutdown: transactions in progress finish, checkouts still waiting
        # for a connection are given up.
        _done, waiting = await asyncio.wait(writers, timeout=2 * HOLD_S)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        result["writes"] = writes
    else:
        read = text(f"SELECT v FROM {config['table']}_items WHERE id = :id")
        requests: list[tuple[float, float, str]] = []
        rng = random.Random(config["index"])

        async def request(start: float) -> None:
            began = time.monotonic()
            try:
                async with asyncio.timeout(API_TIMEOUT_S):
                    async with db.session() as session:
                        await session.execute(read, {"id": rng.randrange(1000)})
                outcome = "ok"
            except TimeoutError:
                outcome = "timeout"
            except Exception as error:
                outcome = f"error {type(error).__name__}"
            requests.append((start, time.monotonic() - began, outcome))

        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / config["rate"]
        next_at = time.monotonic()
        while not stop.is_set():
            next_at += interval
            task = asyncio.create_task(request(time.time()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)
        result["requests"] = requests
    await db.aclose()
    return result


def _touch(path: str) -> None:
    Path(path).touch()


def child_main() -> None:
    config = json.loads(os.environ["LAB_CHILD"])
    # The ledger's events (fallback, rejoin…) go to this process's log, which the lab reads.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    result = asyncio.run(_child(config))
    Path(config["out"]).write_text(json.dumps(result))


# -- the harness ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    t: float  # wall clock
    servers: int  # PgBouncer sv_active over the app's pools: server connections in use
    open: int  # sv_active + sv_idle + sv_used
    waiting: int  # cl_waiting: clients waiting at the pooler for a server connection
    api: int  # API clients holding a server connection
    workers: int  # worker clients holding a server connection
    held_by: dict[str, int]  # application_name → clients holding a server connection
    backends: int  # pg_stat_activity rows of the database


class Sampler(threading.Thread):
    """SHOW POOLS / SHOW CLIENTS of the lab's PgBouncer and pg_stat_activity, every 0.1 s."""

    def __init__(self, bouncer: Any, database_url: str) -> None:
        super().__init__(daemon=True)
        self.bouncer = bouncer
        self.database_url = database_url
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        upstream = make_url(self.database_url)
        admin_url = upstream.set(host="127.0.0.1", port=self.bouncer.port, database="pgbouncer")
        with (
            psycopg.connect(
                admin_url.render_as_string(hide_password=False), autocommit=True
            ) as admin,
            psycopg.connect(self.database_url, autocommit=True) as pg,
        ):
            while not self.stopping.wait(SAMPLE_EVERY_S):
                with contextlib.suppress(Exception):  # a sample lost beats a lab stopped
                    self.samples.append(self._sample(admin, pg, upstream.database or ""))

    @staticmethod
    def _rows(admin: Any, command: str) -> list[dict[str, str]]:
        result = admin.pgconn.exec_(command.encode())
        names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
        return [
            {n: (result.get_value(r, i) or b"").decode() for i, n in enumerate(names)}
            for r in range(result.ntuples)
        ]

    def _sample(self, admin: Any, pg: Any, database: str) -> Sample:
        pools = [p for p in self._rows(admin, "SHOW POOLS") if p["database"] != "pgbouncer"]
        clients = self._rows(admin, "SHOW CLIENTS")
        held: dict[str, int] = {}
        for client in clients:
            if client["link"] and client["application_name"].startswith("lab:"):
                held[client["application_name"]] = held.get(client["application_name"], 0) + 1
        row = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()

        def total(key: str) -> int:
            return sum(int(p[key]) for p in pools)

        return Sample(
            t=time.time(),
            servers=total("sv_active"),
            open=total("sv_active") + total("sv_idle") + total("sv_used"),
            waiting=total("cl_waiting"),
            api=sum(n for app, n in held.items() if app.startswith("lab:api")),
            workers=sum(n for app, n in held.items() if app.startswith("lab:worker")),
            held_by=held,
            backends=int(row[0]) if row else 0,
        )


@dataclasses.dataclass
class Lab:
    """One run's servers and scratch space: PostgreSQL URL, the lab's own Redis, a directory."""

    database_url: str
    redis: Any  # loopsafe.testing.EmbeddedRedis: the ledger's Redis, restartable
    directory: Path
    table: str = dataclasses.field(default_factory=lambda: f"lab_writes_{uuid.uuid4().hex[:8]}")

    def create_tables(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as pg:
            pg.execute(
                f"CREATE TABLE {self.table} (id bigserial PRIMARY KEY, worker int NOT NULL, "
                "at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            pg.execute(f"CREATE TABLE {self.table}_items (id int PRIMARY KEY, v text NOT NULL)")
            pg.execute(
                f"INSERT INTO {self.table}_items SELECT i, md5(i::text) "
                "FROM generate_series(0, 999) i"
            )

    def drop_tables(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as pg:
            pg.execute(f"DROP TABLE IF EXISTS {self.table}, {self.table}_items")

    def writes_between(self, start: float, end: float) -> int:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as pg:
            row = pg.execute(
                f"SELECT count(*) FROM {self.table} WHERE at >= to_timestamp(%s) "
                "AND at < to_timestamp(%s)",
                (start, end),
            ).fetchone()
        return int(row[0]) if row else 0


def elastic_plan(redis_url: str, name: str) -> dict[str, Any]:
    """The elastic plan: the API first, workers everything but 1 connection kept for it."""
    return {
        "max_connections": LIMIT,
        "reserve": 0,
        "ledger": redis_url,
        "name": name,
        "roles": {"api": {"priority": 10}, "worker": {"priority": 0, "headroom": 1}},
    }


def static_plan() -> dict[str, Any]:
    """The static plan: 2 API and 8 worker processes, each role its share."""
    return {
        "max_connections": LIMIT,
        "reserve": 0,
        "roles": {"api": {"processes": API_PROCESSES}, "worker": {"processes": WORKER_PROCESSES}},
    }


def elastic_available() -> bool:
    """Whether this loopsafe has elastic roles (a `Role` without a process count)."""
    from loopsafe.db import Role

    try:
        Role(priority=10)  # type: ignore[call-arg, unused-ignore]
    except TypeError:
        return False
    return True


class Fleet:
    """The API and worker processes of one row, their go file, and their results."""

    def __init__(self, lab: Lab, row: str, bouncer: Any, plan: dict[str, Any] | None) -> None:
        from roadmap_app.processes import ManagedProcess

        self._managed = ManagedProcess
        self.lab = lab
        self.row = row
        self.bouncer = bouncer
        self.plan = plan
        self.dir = lab.directory / re.sub(r"\W+", "-", row) / uuid.uuid4().hex[:6]
        self.dir.mkdir(parents=True)
        self.processes: dict[str, Any] = {}
        self.going: set[str] = set()

    def _url(self, role: str) -> str:
        if self.row == "PgBouncer split":
            return str(self.bouncer.url_for(role))
        return str(self.bouncer.url)

    def start(self, kind: str, index: int) -> str:
        app = f"lab:{kind}:{index}"
        config = {
            "kind": kind,
            "index": index,
            "app": app,
            "url": self._url(kind),
            "plan": self.plan,
            "role": kind,
            "table": self.lab.table,
            "rate": API_RATE / API_PROCESSES,
            "go_now": kind in self.going,
            "ready": str(self.dir / f"{app}.ready"),
            "out": str(self.dir / f"{app}.json"),
        }
        env = {**os.environ, "LAB_CHILD": json.dumps(config), "PYTHONUNBUFFERED": "1"}
        for key in ("DATABASE_URL", "REDIS_URL", "LOOPSAFE_LEDGER_URL", "LOOPSAFE_BUDGET_PLAN"):
            env.pop(key, None)
        self.processes[app] = self._managed(
            app, [sys.executable, __file__], env=env, log_path=self.dir / f"{app}.log"
        ).start()
        return app

    def go(self, kind: str) -> None:
        """Let the `kind` processes start their load (SIGUSR1); later ones start at once."""
        self.going.add(kind)
        for app, process in self.processes.items():
            if app.startswith(f"lab:{kind}:") and process.alive:
                os.kill(process.pid, signal.SIGUSR1)

    def check_alive(self) -> None:
        for app, process in self.processes.items():
            if not process.alive and not (self.dir / f"{app}.json").exists():
                raise RuntimeError(f"{self.row}: {app} died:\n{process.tail()}")

    def check_alive_except(self, dead: str) -> None:
        for app, process in self.processes.items():
            if app != dead and not process.alive:
                raise RuntimeError(f"{self.row}: {app} died:\n{process.tail()}")

    def wait_ready(self, apps: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for app in apps:
            while not (self.dir / f"{app}.ready").exists():
                process = self.processes[app]
                if not process.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.row}: {app} never got ready:\n{process.tail()}")
                time.sleep(0.05)

    def stop(self, app: str) -> dict[str, Any]:
        """SIGTERM: the process finishes its transactions, closes and writes its results."""
        self.processes[app].stop(timeout=30)
        out = self.dir / f"{app}.json"
        return json.loads(out.read_text()) if out.exists() else {"app": app, "errors": {}}

    def stop_many(self, apps: list[str]) -> list[dict[str, Any]]:
        """Stop `apps` at once (as an autoscaler scales in), each as `stop` does."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, len(apps))) as pool:
            return list(pool.map(self.stop, apps))

    def stop_all(self) -> list[dict[str, Any]]:
        results = []
        for app, process in list(self.processes.items()):
            if process.alive:
                results.append(self.stop(app))
        return results

    def kill_all(self) -> None:
        for process in self.processes.values():
            process.kill()

    def log_events(self) -> list[tuple[str, str]]:
        """(app, line) of every log line that mentions the ledger, from every process."""
        lines = []
        for app, process in self.processes.items():
            for line in process.log_text().splitlines():
                if re.search(r"ledger|elastic|fallback", line, re.IGNORECASE):
                    lines.append((app, line))
        return lines


@contextlib.contextmanager
def bouncer_for(row: str, database_url: str) -> Iterator[Any]:
    from loopsafe.testing import PgBouncer

    if row == "PgBouncer split":
        bouncer = PgBouncer(
            database_url,
            default_pool_size=LIMIT,
            max_client_conn=1000,
            aliases={"api": 2, "worker": LIMIT - 2},
        )
    elif row.startswith("elastic"):
        bouncer = PgBouncer(
            database_url, default_pool_size=LIMIT + ELASTIC_SLACK, max_client_conn=1000
        )
    else:
        bouncer = PgBouncer(database_url, default_pool_size=LIMIT, max_client_conn=1000)
    with bouncer:
        yield bouncer


def plan_for(row: str, lab: Lab) -> dict[str, Any] | None:
    if row == "static plan":
        return static_plan()
    if row.startswith("elastic"):
        return elastic_plan(lab.redis.url, f"lab-{uuid.uuid4().hex[:8]}")
    return None


# -- comparison rows ------------------------------------------------------------------------------


@dataclasses.dataclass
class RowResult:
    row: str
    requests: list[tuple[float, float, str]]  # API: (wall start, latency s, outcome)
    windows: dict[str, tuple[float, float]]  # name → wall (start, end)
    writes: dict[str, int]  # window → rows written
    worker_errors: dict[str, int]
    samples: list[Sample]
    server_pool: int
    shares: str
    events: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def latency(self, window: str) -> dict[str, float]:
        start, end = self.windows[window]
        chosen = [r for r in self.requests if start <= r[0] < end]
        answered = [r[1] * 1000 for r in chosen if r[2] != "timeout"]
        return {
            "p50": percentile(answered, 0.5),
            "p99": percentile(answered, 0.99),
            "errors": sum(r[2] != "ok" for r in chosen),
            "n": len(chosen),
        }

    def rate(self, window: str) -> float:
        start, end = self.windows[window]
        return self.writes.get(window, 0) / (end - start)

    def peak(self, field: str, window: str | None = None) -> int:
        chosen = self.samples
        if window is not None:
            start, end = self.windows[window]
            chosen = [s for s in self.samples if start <= s.t < end]
        return max((int(getattr(s, field)) for s in chosen), default=0)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def _shares(plan: dict[str, Any] | None, row: str) -> str:
    if row == "PgBouncer split":
        return f"PgBouncer: api database pool_size 2, worker database {LIMIT - 2}; pools 2+2"
    if plan is None:
        return "none: every process pool 2 + overflow 2"
    from loopsafe.db import BudgetPlan

    built = BudgetPlan.from_mapping(plan)
    if row.startswith("elastic"):
        return "elastic: api priority 10, worker priority 0 headroom 1, ledger in Redis"
    return "static: " + ", ".join(
        f"{role} {built.budget_for(role).per_process}/process" for role in built.roles
    )


def run_row(lab: Lab, row: str, idle_s: float, load_s: float, warmup_s: float = 3.0) -> RowResult:
    """2 API processes alone (idle window), then 8 worker processes saturating (load window)."""
    plan = plan_for(row, lab)
    with bouncer_for(row, lab.database_url) as bouncer:
        fleet = Fleet(lab, row, bouncer, plan)
        sampler = Sampler(bouncer, lab.database_url)
        try:
            apis = [fleet.start("api", i) for i in range(API_PROCESSES)]
            workers = [fleet.start("worker", i) for i in range(WORKER_PROCESSES)]
            fleet.wait_ready(apis + workers)
            sampler.start()
            fleet.go("api")
            time.sleep(warmup_s)  # first requests meet cold connections: not measured
            idle = (time.time(), time.time() + idle_s)
            time.sleep(idle_s)
            fleet.go("worker")
            time.sleep(2.0)  # the workers' ramp
            load = (time.time(), time.time() + load_s)
            time.sleep(load_s)
            fleet.check_alive()
            worker_results = fleet.stop_many(workers)
            api_results = fleet.stop_many(apis)
        finally:
            sampler.stopping.set()
            fleet.kill_all()
        sampler.join(5)
    windows = {"idle": idle, "load": load}
    return _row_result(fleet, sampler, windows, api_results, worker_results, written=["load"])


def _row_result(
    fleet: Fleet,
    sampler: Sampler,
    windows: dict[str, tuple[float, float]],
    api_results: list[dict[str, Any]],
    worker_results: list[dict[str, Any]],
    *,
    written: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> RowResult:
    """What a finished run measured: API requests, the rows written in each of the `written`
    windows (all of them by default), the pooler's samples and the processes' log events."""
    return RowResult(
        row=fleet.row,
        requests=_requests(api_results),
        windows=windows,
        writes={
            name: fleet.lab.writes_between(*windows[name]) for name in (written or list(windows))
        },
        worker_errors=merge_errors(worker_results),
        samples=sampler.samples,
        server_pool=fleet.bouncer.default_pool_size,
        shares=_shares(fleet.plan, fleet.row),  # an elastic row's name starts with "elastic"
        events=fleet.log_events(),
        extra=extra or {},
    )


def _requests(results: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    return [(float(a), float(b), str(c)) for r in results for a, b, c in r.get("requests", [])]


def merge_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for result in results:
        for kind, count in result.get("errors", {}).items():
            merged[kind] = merged.get(kind, 0) + int(count)
    return merged


# -- autoscaling ----------------------------------------------------------------------------------


def _start_all(fleet: Fleet, sampler: Sampler, workers: int) -> tuple[list[str], list[str]]:
    """Start the API processes and `workers` workers, start sampling, let them all go and ramp up
    for 3 s; their apps: (API, workers)."""
    apis = [fleet.start("api", i) for i in range(API_PROCESSES)]
    started = [fleet.start("worker", i) for i in range(workers)]
    fleet.wait_ready(apis + started)
    sampler.start()
    fleet.go("api")
    fleet.go("worker")
    time.sleep(3.0)
    return apis, started


def run_autoscale(lab: Lab, phase_s: float, low: int = 2, high: int = 12) -> RowResult:
    """Elastic: the API and `low` workers, then `high` (new processes join), then `low` again
    (the extra ones leave on SIGTERM), with one plan that never changes."""
    row = f"elastic, autoscaling {low} → {high} → {low} workers"
    plan = plan_for("elastic", lab)
    with bouncer_for("elastic", lab.database_url) as bouncer:
        fleet = Fleet(lab, row, bouncer, plan)
        sampler = Sampler(bouncer, lab.database_url)
        results: list[dict[str, Any]] = []
        try:
            apis, first = _start_all(fleet, sampler, low)
            windows = {f"{low} workers": (time.time(), time.time() + phase_s)}
            time.sleep(phase_s)
            joined = [fleet.start("worker", i) for i in range(low, high)]
            fleet.wait_ready(joined)  # they start writing as soon as they are ready
            time.sleep(2.0)
            windows[f"{high} workers"] = (time.time(), time.time() + phase_s)
            time.sleep(phase_s)
            left = time.time()
            results += fleet.stop_many(joined)
            windows["leaving"] = (left, time.time())
            time.sleep(2.0)
            windows[f"{low} workers again"] = (time.time(), time.time() + phase_s)
            time.sleep(phase_s)
            fleet.check_alive()
            results += fleet.stop_many(first)
            api_results = fleet.stop_many(apis)
        finally:
            sampler.stopping.set()
            fleet.kill_all()
        sampler.join(5)
    windows["whole run"] = (windows[f"{low} workers"][0], windows[f"{low} workers again"][1])
    return _row_result(fleet, sampler, windows, api_results, results)


# -- faults ---------------------------------------------------------------------------------------


def run_faults(lab: Lab, steady_s: float, outage_s: float) -> RowResult:
    """Elastic: SIGKILL the worker holding the most connections and time until the others use
    its share again; then stop the ledger's Redis for `outage_s` and start it again."""
    row = "elastic, faults: SIGKILL a worker, restart Redis"
    plan = plan_for("elastic", lab)
    with bouncer_for("elastic", lab.database_url) as bouncer:
        fleet = Fleet(lab, row, bouncer, plan)
        sampler = Sampler(bouncer, lab.database_url)
        extra: dict[str, Any] = {}
        try:
            apis, workers = _start_all(fleet, sampler, WORKER_PROCESSES)
            before = (time.time(), time.time() + steady_s)
            time.sleep(steady_s)
            latest = sampler.samples[-1]
            victim = max(workers, key=lambda app: latest.held_by.get(app, 0))
            extra["victim_held"] = latest.held_by.get(victim, 0)
            extra["killed_at"] = killed = time.time()
            fleet.processes[victim].kill()  # SIGKILL: no release, no goodbye
            time.sleep(10.0)
            steady = [s.workers for s in sampler.samples if before[0] <= s.t < before[1]]
            extra["steady_workers"] = statistics.median(steady) if steady else 0
            extra["recovered_s"] = next(
                (
                    s.t - killed
                    for s in sampler.samples
                    if s.t > killed + 0.2 and s.workers >= extra["steady_workers"]
                ),
                None,
            )
            extra["redis_stopped_at"] = time.time()
            lab.redis.stop()
            time.sleep(outage_s)
            lab.redis.start()
            extra["redis_started_at"] = time.time()
            time.sleep(max(10.0, steady_s))
            end = time.time()
            survivors = [app for app in workers if app != victim]
            fleet.check_alive_except(victim)
            results = fleet.stop_many(survivors)
            api_results = fleet.stop_many(apis)
        finally:
            sampler.stopping.set()
            fleet.kill_all()
            lab.redis.start()
        sampler.join(5)
    windows = {
        "before the kill": before,
        "after the kill": (extra["killed_at"], extra["redis_stopped_at"]),
        "Redis down": (extra["redis_stopped_at"], extra["redis_started_at"]),
        "Redis back": (extra["redis_started_at"], end),
        "whole run": (before[0], end),
    }
    return _row_result(fleet, sampler, windows, api_results, results, extra=extra)


# -- report ---------------------------------------------------------------------------------------

COLUMNS = [
    "row",
    "connection sharing",
    "API idle p50 / p99 ms",
    "API under load p50 / p99 ms",
    "p99 load / idle",
    "API errors + timeouts",
    "worker writes/s",
    "% of unprotected",
    "worker errors",
    "peak server conns in use (sv_active) / PgBouncer pool",
    "peak waiting at the pooler (cl_waiting)",
    "peak pg backends",
]


def _ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.0f}"  # NaN: nothing answered


def row_cells(result: RowResult, unprotected: float | None) -> list[object]:
    idle, load = result.latency("idle"), result.latency("load")
    rate = result.rate("load")
    errors = idle["errors"] + load["errors"]
    return [
        result.row,
        result.shares,
        f"{_ms(idle['p50'])} / {_ms(idle['p99'])}",
        f"{_ms(load['p50'])} / {_ms(load['p99'])}",
        f"{load['p99'] / idle['p99']:.1f}×" if idle["p99"] > 0 else "n/a",
        f"{errors:.0f} of {idle['n'] + load['n']:.0f}",
        f"{rate:.1f}",
        f"{100 * rate / unprotected:.0f} %" if unprotected else "n/a",
        sum(result.worker_errors.values()),
        f"{result.peak('servers')} / {result.server_pool}",
        result.peak("waiting"),
        result.peak("backends"),
    ]


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def row_goals(elastic: RowResult, unprotected: RowResult | None) -> list[str]:
    idle, load = elastic.latency("idle"), elastic.latency("load")
    errors = idle["errors"] + load["errors"]
    lines = [
        f"- API p99 under load ≤ 2× its idle p99: {mark(load['p99'] <= 2 * idle['p99'])} "
        f"({_ms(load['p99'])} ms vs {_ms(idle['p99'])} ms)",
        f"- 0 API errors: {mark(errors == 0)} ({errors:.0f} errors + timeouts)",
    ]
    if unprotected is not None:
        share = 100 * elastic.rate("load") / unprotected.rate("load")
        lines.append(
            f"- worker throughput ≥ 90 % of the unprotected row's: {mark(share >= 90)} "
            f"({share:.0f} %: {elastic.rate('load'):.1f} vs {unprotected.rate('load'):.1f} writes/s)"
        )
    lines.append(_limit_line(elastic))
    return lines


def _limit_line(result: RowResult) -> str:
    peak = result.peak("servers")
    backends = result.peak("backends")
    return (
        f"- server connections never above the limit ({LIMIT}; PgBouncer's pool is "
        f"{result.server_pool}, so only loopsafe holds the limit): {mark(peak <= LIMIT)} "
        f"(peak sv_active {peak} sampled every {SAMPLE_EVERY_S:g} s; peak backends {backends}, "
        "in use or idle)"
    )


def phases_table(result: RowResult) -> list[str]:
    lines = [
        "| window | s | API p50 / p99 ms | API errors + timeouts | worker writes/s | "
        "peak server conns in use | peak cl_waiting |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (start, end) in result.windows.items():
        lat = result.latency(name)
        lines.append(
            f"| {name} | {end - start:.1f} | {_ms(lat['p50'])} / {_ms(lat['p99'])} | "
            f"{lat['errors']:.0f} of {lat['n']:.0f} | "
            f"{result.writes.get(name, 0) / max(end - start, 1e-9):.1f} | "
            f"{result.peak('servers', name)} | {result.peak('waiting', name)} |"
        )
    return lines


def autoscale_goals(result: RowResult) -> list[str]:
    lat = result.latency("whole run")
    worker_errors = sum(result.worker_errors.values())
    return [
        _limit_line(result),
        f"- 0 errors: {mark(lat['errors'] == 0 and worker_errors == 0)} ({lat['errors']:.0f} API "
        f"errors + timeouts of {lat['n']:.0f}, {worker_errors} worker errors"
        f"{' ' + json.dumps(result.worker_errors) if worker_errors else ''})",
    ]


def event_names(result: RowResult, start: float | None = None) -> dict[str, int]:
    """Ledger event names logged by the processes (counted), from their log lines."""
    names: dict[str, int] = {}
    for _app, line in result.events:
        found = re.search(r"loopsafe\.db\.ledger_\w+", line)
        if found:
            names[found.group(0)] = names.get(found.group(0), 0) + 1
    return names


def fault_goals(result: RowResult) -> list[str]:
    extra = result.extra
    recovered = extra.get("recovered_s")
    lat = result.latency("whole run")
    worker_errors = sum(result.worker_errors.values())
    events = event_names(result)
    fallback = events.get("loopsafe.db.ledger_fallback", 0)
    rejoined = events.get("loopsafe.db.ledger_rejoined", 0)
    return [
        f"- SIGKILLed worker's share back within 5 s: "
        f"{mark(recovered is not None and recovered <= 5)} ("
        + (f"{recovered:.1f} s" if recovered is not None else "not within 10 s")
        + f" until the workers held {extra.get('steady_workers', 0):g} server connections again, "
        f"their median before the kill; the killed worker held {extra.get('victim_held', 0)})",
        _limit_line(result),
        f"- 0 API errors across the kill and the Redis restart: {mark(lat['errors'] == 0)} "
        f"({lat['errors']:.0f} errors + timeouts of {lat['n']:.0f}; worker errors {worker_errors}"
        f"{' ' + json.dumps(result.worker_errors) if worker_errors else ''})",
        f"- fallback logged and left when Redis returned: {mark(fallback > 0 and rejoined > 0)} "
        f"(events: {', '.join(f'{k} × {v}' for k, v in sorted(events.items())) or 'none'})",
    ]


def chart(results: list[RowResult], path: Path) -> None:
    """Per row: API latency over time, and server connections in use by role."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(13, 3.0 * len(results)), squeeze=False)
    for (latency_ax, conn_ax), result in zip(axes, results, strict=True):
        t0 = min(w[0] for w in result.windows.values())
        for name, (start, end) in result.windows.items():
            if name in ("whole run", "idle"):
                continue
            for ax in (latency_ax, conn_ax):
                ax.axvspan(start - t0, end - t0, color="#f3d9a4", alpha=0.35)
                ax.text(
                    start - t0, 1.0, name, transform=ax.get_xaxis_transform(), fontsize=6, va="top"
                )
        ok = [r for r in result.requests if r[2] == "ok"]
        bad = [r for r in result.requests if r[2] != "ok"]
        latency_ax.scatter(
            [r[0] - t0 for r in ok], [r[1] * 1000 for r in ok], s=3, color="#3b6ea5", label="ok"
        )
        if bad:
            latency_ax.scatter(
                [r[0] - t0 for r in bad],
                [r[1] * 1000 for r in bad],
                s=8,
                color="#c0392b",
                marker="x",
                label="error / timeout",
            )
        latency_ax.set_yscale("log")
        latency_ax.set_ylabel("API latency (ms)")
        latency_ax.set_title(f"{result.row}: API latency", fontsize=9)
        latency_ax.legend(loc="upper left", fontsize=7)
        t = [s.t - t0 for s in result.samples]
        conn_ax.plot(
            t, [s.workers for s in result.samples], label="held by workers", color="#e67e22", lw=0.8
        )
        conn_ax.plot(
            t, [s.api for s in result.samples], label="held by the API", color="#3b6ea5", lw=0.8
        )
        conn_ax.plot(
            t, [s.servers for s in result.samples], label="sv_active", color="#7f8c8d", lw=0.6
        )
        conn_ax.plot(
            t, [s.waiting for s in result.samples], label="cl_waiting", color="#c0392b", lw=0.6
        )
        conn_ax.axhline(LIMIT, color="black", ls="--", lw=0.8, label=f"limit {LIMIT}")
        conn_ax.set_title(f"{result.row}: server connections", fontsize=9)
        conn_ax.legend(loc="upper left", fontsize=6, ncol=3)
        for ax in (latency_ax, conn_ax):
            ax.set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary(result: RowResult) -> dict[str, Any]:
    return {
        "db_bound": result.row,
        "shares": result.shares,
        "windows": {
            name: {
                **result.latency(name),
                "writes_per_s": result.writes.get(name, 0) / max(end - start, 1e-9),
                "peak_servers": result.peak("servers", name),
            }
            for name, (start, end) in result.windows.items()
        },
        "peak_servers": result.peak("servers"),
        "peak_waiting": result.peak("waiting"),
        "peak_backends": result.peak("backends"),
        "server_pool": result.server_pool,
        "worker_errors": result.worker_errors,
        "events": event_names(result),
        **{k: v for k, v in result.extra.items() if isinstance(v, (int, float, str, type(None)))},
    }


if __name__ == "__main__":
    child_main()
