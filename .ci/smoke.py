"""Release smoke test: run with the built wheel installed in a fresh virtualenv, outside the repo.

Usage: python smoke.py POSTGRESQL_URL
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import pathlib
import subprocess
import sys

from sqlalchemy import text

import loopsafe
import loopsafe.db
from loopsafe import LoopLocal

assert "site-packages" in pathlib.Path(loopsafe.__file__).parts, loopsafe.__file__
assert importlib.metadata.version("loopsafe") == loopsafe.__version__
# Installing loopsafe must not register a pytest plugin: it is opt-in.
entry_points = importlib.metadata.entry_points(group="pytest11")
assert not [e for e in entry_points if e.value.startswith("loopsafe")], list(entry_points)


class Resource:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


made: list[Resource] = []
resource = LoopLocal(lambda: made.append(Resource()) or made[-1], name="smoke")


async def use() -> None:
    assert resource.get() is resource.get()
    assert resource.get().loop is asyncio.get_running_loop()


for _ in range(2):
    asyncio.run(use())
assert len(made) == 2, made
assert all(r.closed for r in made), made


async def query(url: str) -> int:
    database = loopsafe.db.Database(url, name="smoke")
    async with database.session() as session:
        value: int = (await session.execute(text("SELECT 41 + 1"))).scalar_one()
    return value


assert asyncio.run(query(sys.argv[1])) == 42

budget = subprocess.run(
    [sys.executable, "-m", "loopsafe", "budget", "--max-connections", "100", "web=2", "worker=2:4"],
    check=True,
    capture_output=True,
    text=True,
).stdout
assert "84 of 90 usable connections" in budget, budget
print(f"smoke test passed: loopsafe {loopsafe.__version__} from {loopsafe.__file__}")
