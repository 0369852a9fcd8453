"""ghz drives the service through server reflection alone, as operators will."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest

from server.app import TriageServer
from server.calls import Role

CASE = {"case": {"age": {"years": 67}, "chief_complaint": "CP, SOB", "vitals": {"heart_rate_bpm": 104}}}


@pytest.fixture
def ghz() -> str:
    path = shutil.which("ghz")
    if path is None:
        # `make test` installs ghz (go install); never skip it silently there.
        if os.environ.get("TEST_REQUIRE_GHZ"):
            pytest.fail("ghz is not on PATH but TEST_REQUIRE_GHZ is set")
        pytest.skip("ghz is not installed: `make test` installs it")
    return path


@pytest.mark.parametrize("call", ["triage.v1.ClassifyService/Classify", "triage.v1.ExplainService/Explain"])
async def test_a_short_ghz_run_over_reflection(
    server: TriageServer, keys: dict[Role, str], ghz: str, call: str
) -> None:
    metadata = json.dumps({"authorization": f"Bearer {keys[Role.SERVICE]}"})
    process = await asyncio.create_subprocess_exec(
        ghz, "--insecure", "--call", call, "--data", json.dumps(CASE), "--metadata", metadata,
        "--total", "300", "--concurrency", "10",
        "--format", "json", f"127.0.0.1:{server.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()

    assert process.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["count"] == 300
    assert report["statusCodeDistribution"] == {"OK": 300}
