"""Watches a Redis result backend for ``bench_celery_client.py``, in a process of its own.

``publishes URL OUT``: subscribes to every ``celery-task-meta-*`` channel and appends
``<task id> <wall-clock time>`` to OUT as each outcome is published: the moment between the
worker storing an outcome and a waiter waking up. ``clients URL OUT NAME``: every 0.2 s, the
number of Redis connections and of those named NAME; OUT holds the peaks. Runs until killed.

In the measured process these would compete with the waiters' loop for the GIL (a CLIENT LIST
of 150 clients takes milliseconds to parse) and show up in the very latency being measured.
"""

from __future__ import annotations

import os
import sys
import time

import redis

PREFIX = "celery-task-meta-"


def publishes(url: str, out: str) -> None:
    pubsub = redis.Redis.from_url(url).pubsub()
    pubsub.psubscribe(f"{PREFIX}*")
    with open(out, "a", buffering=1) as log:  # line-buffered: a kill loses no line
        for message in pubsub.listen():  # type: ignore[no-untyped-call]  # unannotated in redis-py
            if message["type"] == "psubscribe":
                log.write("ready\n")
            elif message["type"] == "pmessage":
                task_id = message["channel"].decode()[len(PREFIX) :]
                log.write(f"{task_id} {time.time()}\n")


def clients(url: str, out: str, name: str) -> None:
    admin = redis.Redis.from_url(url)
    peak = peak_named = 0
    while True:
        listed = admin.client_list()
        peak = max(peak, len(listed))
        peak_named = max(peak_named, sum(1 for one in listed if one.get("name") == name))
        with open(f"{out}.tmp", "w") as file:
            file.write(f"{peak} {peak_named}\n")
        os.replace(f"{out}.tmp", out)
        time.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1] == "publishes":
        publishes(sys.argv[2], sys.argv[3])
    else:
        clients(sys.argv[2], sys.argv[3], sys.argv[4])
