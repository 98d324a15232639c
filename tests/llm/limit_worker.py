"""A worker process sharing an LLM limit with others: ``python -m tests.llm.limit_worker MODE ...``.

``burst REDIS LLM NAMESPACE MODEL THREADS CALLS CONCURRENCY``: THREADS threads, each on its own
loop, send CALLS concurrent completions through get_openai(); prints the errors as JSON.
``hold REDIS NAMESPACE LEASE``: takes the one slot of a limit, prints ``held`` and sleeps (to be
killed).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading

import loopsafe.redis
from loopsafe.llm import Limit, configure, get_openai, limit


def burst(model: str, threads: int, calls: int) -> list[str]:
    errors: list[str] = []

    async def one(n: int) -> None:
        await get_openai().chat.completions.create(
            model=model, messages=[{"role": "user", "content": str(n)}]
        )

    async def run() -> None:
        results = await asyncio.gather(*(one(n) for n in range(calls)), return_exceptions=True)
        errors.extend(f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException))

    workers = [threading.Thread(target=asyncio.run, args=(run(),)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


async def hold() -> None:
    async with limit("openai"):
        print("held", flush=True)
        await asyncio.sleep(3600)


def main(mode: str, redis_url: str, *args: str) -> None:
    loopsafe.redis.configure(redis_url)
    if mode == "burst":
        llm_url, namespace, model, threads, calls, concurrency = args
        configure(
            openai_api_key="k",
            openai_base_url=llm_url,
            max_retries=0,
            timeout=60,
            limits={"openai": Limit(concurrency=int(concurrency))},
            namespace=namespace,
        )
        print(json.dumps(burst(model, int(threads), int(calls))), flush=True)
    else:
        namespace, lease = args
        configure(limits={"openai": Limit(concurrency=1, lease=float(lease))}, namespace=namespace)
        asyncio.run(hold())


if __name__ == "__main__":
    main(*sys.argv[1:])
