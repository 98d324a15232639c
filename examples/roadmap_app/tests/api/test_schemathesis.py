"""schemathesis, every check and every phase (stateful included), against the API as a real
process on real PostgreSQL and Redis: the OpenAPI document is the contract, and nothing is a 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from roadmap_testkit import FULL_TIER, Stack, delete_keys, make_env

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# Seed, examples per operation, time budget (60 s) and stream reading are pinned there.
CONFIG = Path(__file__).resolve().parent.parent / "schemathesis.toml"
# The quick tier (`make test`): every check and phase, fewer examples, a third of the time. The
# full budget runs with LOOPSAFE_TEST_TIER=full (CI's first suite stage).
QUICK = [] if FULL_TIER else ["--max-examples", "8", "--max-time", "20"]


@pytest.mark.timeout(180)
def test_the_api_keeps_its_openapi_contract_under_schemathesis(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    # The API alone: queued jobs wait in Redis under a prefix of their own, so the roadmaps the
    # fuzzer creates stay pending instead of keeping workers busy.
    prefix = f"fuzz{uuid.uuid4().hex[:8]}:"
    api = Stack(make_env(database_url, redis_url, prefix), tmp_path, name="fuzz")
    try:
        api.start_api()
        api.wait_ready()
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "--config-file",
                str(CONFIG),
                "run",
                "--checks",
                "all",
                "--no-color",
                *QUICK,
                f"{api.base_url}/openapi.json",
            ],
            cwd=tmp_path,  # where schemathesis keeps its cache of found failures
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
    finally:
        api.stop()
        delete_keys(redis_url, prefix)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report + "\n" + api.logs()
    assert "11 selected / 11 total" in report  # +cancel, delete, export, regenerate
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅  {phase}" in report, report
    assert re.search(r"(\d+) generated, \1 passed", report), report
