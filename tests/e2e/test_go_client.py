"""The Go example (clients/go), built with Go and run against a real server process.

It is what a Go EHR team starts from, so it has to build from the committed stubs and read what
the server sends: a classification, a bad input as google.rpc.BadRequest field violations, a spent
rate limit as QuotaFailure and RetryInfo (and a short RetryInfo wait honoured before retrying).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.processes import ServerProcess, create_key, start_server
from tests.e2e.tools import require

ROOT = Path(__file__).resolve().parents[2]
GO_MODULE = ROOT / "clients" / "go"
CHEST_PAIN = {"age": {"years": 67}, "chief_complaint": "chest pain", "vitals": {"heart_rate_bpm": 110}}
SORE_THROAT = {"age": {"years": 30}, "chief_complaint": "sore throat"}
# A classification line: level, 26-character ULID, the decision point, the rationale.
CLASSIFIED = re.compile(r"^(ESI_LEVEL_[1-5]) ([0-9A-Z]{26}) decided at (STEP_[A-Z_]+): ESI [1-5]")


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's binary, built once (from Go's caches, which `make go-example` fills)."""
    require("go")
    binary = tmp_path_factory.mktemp("go") / "triage-example"
    subprocess.run(["go", "build", "-o", str(binary), "./cmd/triage-example"], cwd=GO_MODULE, check=True)
    return binary


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = await start_server(tmp_path)
    reader = asyncio.create_task(server.read_log())  # the log pipe never fills
    yield server
    server.process.terminate()
    async with asyncio.timeout(15):
        await server.process.wait()
        await reader


async def run(example: Path, server: ServerProcess, key: str, case: object, *flags: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        example, *flags, json.dumps(case),
        env={"TRIAGE_TARGET": f"127.0.0.1:{server.port}", "TRIAGE_API_KEY": key},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def test_classifies_a_case(example: Path, server: ServerProcess, tmp_path: Path) -> None:
    key = await create_key(tmp_path, "clinician")

    result = await run(example, server, key, CHEST_PAIN)

    assert result.code == 0, result.err
    match = CLASSIFIED.match(result.out)
    assert match is not None, result.out
    assert match.group(1, 3) == ("ESI_LEVEL_2", "STEP_HIGH_RISK")
    assert "acute coronary syndrome" in result.out


async def test_reads_a_bad_input_as_field_violations(example: Path, server: ServerProcess, tmp_path: Path) -> None:
    key = await create_key(tmp_path, "clinician")

    result = await run(example, server, key, {"chief_complaint": "chest pain", "vitals": {"heart_rate_bpm": 900}})

    assert result.code == 1
    assert result.out == ""
    lines = result.err.splitlines()
    assert lines[0].startswith("InvalidArgument: ")
    assert "  field case.age: the age is required (REQUIRED)" in lines
    assert any(re.fullmatch(r"  field case\.vitals\.heart_rate_bpm: .*900 \(OUT_OF_RANGE\)", line) for line in lines)
    assert re.search(r"^  request id [0-9A-Z]{26}$", result.err, re.MULTILINE)


async def test_reads_a_spent_rate_limit_as_quota_failure_and_retry_info(
    example: Path, server: ServerProcess, tmp_path: Path
) -> None:
    key = await create_key(tmp_path, "service", "--rate-limit", "2/minute")

    result = await run(example, server, key, SORE_THROAT, "-count", "3", "-max-retry-wait", "1s")

    assert result.code == 1
    assert len([line for line in result.out.splitlines() if CLASSIFIED.match(line)]) == 2
    lines = result.err.splitlines()
    assert lines[0].startswith("ResourceExhausted: rate limit of 2 per 1 minute reached")
    assert any(re.fullmatch(r"  quota key:[0-9A-Z]{26}: calls limited to 2 per 1 minute", line) for line in lines)
    # Go prints the RetryInfo delay as a duration: at most the minute the window lasts, and not retried.
    delays = [line.removeprefix("  retry after ") for line in lines if line.startswith("  retry after ")]
    assert len(delays) == 1
    assert re.fullmatch(r"(1m0s|[1-5]?[0-9](\.[0-9]+)?s)", delays[0]), delays
    assert "retrying" not in result.err


async def test_waits_as_retry_info_asks_then_succeeds(example: Path, server: ServerProcess, tmp_path: Path) -> None:
    key = await create_key(tmp_path, "service", "--rate-limit", "1/second")

    result = await run(example, server, key, SORE_THROAT, "-count", "2", "-max-retry-wait", "5s")

    assert result.code == 0, result.err
    assert len([line for line in result.out.splitlines() if CLASSIFIED.match(line)]) == 2
    assert re.fullmatch(r"ResourceExhausted: retrying in [0-9.]+m?s, as RetryInfo asks\n", result.err)


def test_committed_go_stubs_match_the_protos(tmp_path: Path) -> None:
    """clients/go/triage/v1 is what buf.gen.yaml's Go plugins make from proto/ now: `make stubs` if not."""
    require("protoc-gen-go", "protoc-gen-go-grpc")
    # buf.gen.yaml's Go plugins alone (the others need Java's and npm's generators), writing to tmp_path.
    blocks = (ROOT / "buf.gen.yaml").read_text().split("plugins:\n", 1)[1].split("\n  - ")
    go_blocks = [b.removeprefix("  - ") for b in blocks if "local: protoc-gen-go" in b]
    assert len(go_blocks) == 2, "buf.gen.yaml lost its Go plugins"
    template = "version: v2\nplugins:\n" + "".join(
        "  - " + b.replace("out: clients/go", f"out: {tmp_path}").rstrip() + "\n" for b in go_blocks
    )
    subprocess.run(
        [Path(sys.executable).with_name("buf"), "generate", "proto", "--template", template],
        cwd=ROOT, check=True, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )  # fmt: skip

    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.go")}
    committed = {p.relative_to(GO_MODULE): p.read_bytes() for p in (GO_MODULE / "triage").rglob("*.go")}
    assert fresh, "buf generated no Go"
    stale = sorted(str(name) for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert stale == [], "the Go stubs are stale: run `make stubs`"
