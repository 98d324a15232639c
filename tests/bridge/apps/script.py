"""The plain-script recipe: a thread per call, each calling loopsafe.run_async, then exit.

``python -m tests.bridge.apps.script CALLS CONCURRENCY`` prints how many calls failed.
"""

from __future__ import annotations

import sys
import threading

import loopsafe

from .work import handle, setup


def main(calls: int, concurrency: int) -> int:
    setup()
    failures: list[BaseException] = []
    gate = threading.Semaphore(concurrency)

    def one() -> None:
        try:
            loopsafe.run_async(handle(), timeout=10)
        except Exception as exc:
            failures.append(exc)
        finally:
            gate.release()

    threads = []
    for _ in range(calls):
        gate.acquire()
        thread = threading.Thread(target=one)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    print(f"failures={len(failures)}")
    for failure in failures[:3]:
        print(repr(failure), file=sys.stderr)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
