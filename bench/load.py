"""ghz load for the scripts: real-looking cases, one run's figures, and tables to print them.

The cases come from NHAMCS (server/datasets.py), each with a different chief
complaint, so that no memo of the complaint's reading serves every call.
ghz sends the elements of a data array in turn, one per call.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from server.datasets import nhamcs_visits

GHZ_VERSION = "v0.120.0"
CLASSIFY = "triage.v1.ClassifyService/Classify"
EXPLAIN = "triage.v1.ExplainService/Explain"
# ghz names codes as grpc-go does; the tables use the gRPC names.
_CODE_NAMES = {
    "OK": "OK",
    "Canceled": "CANCELLED",
    "Unknown": "UNKNOWN",
    "InvalidArgument": "INVALID_ARGUMENT",
    "DeadlineExceeded": "DEADLINE_EXCEEDED",
    "NotFound": "NOT_FOUND",
    "PermissionDenied": "PERMISSION_DENIED",
    "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "FailedPrecondition": "FAILED_PRECONDITION",
    "Aborted": "ABORTED",
    "Internal": "INTERNAL",
    "Unavailable": "UNAVAILABLE",
    "Unauthenticated": "UNAUTHENTICATED",
}


def find_ghz() -> str:
    """ghz from PATH, or installed next to this Python with `go install`."""
    found = shutil.which("ghz") or shutil.which("ghz", path=str(Path(sys.executable).parent))
    if found:
        return found
    print(f"installing ghz {GHZ_VERSION} with go install ...", file=sys.stderr)
    subprocess.run(
        ["go", "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
        check=True,
        env=os.environ | {"GOBIN": str(Path(sys.executable).parent)},
    )
    return str(Path(sys.executable).parent / "ghz")


def mixed_cases(count: int) -> list[dict[str, Any]]:
    """`count` ClassifyRequest bodies, as JSON, of NHAMCS visits with distinct complaints."""
    seen: set[str] = set()
    requests: list[dict[str, Any]] = []
    for visit in nhamcs_visits():
        complaint = visit.case.chief_complaint
        if complaint in seen:
            continue
        seen.add(complaint)
        visit.case.case_ref = f"nhamcs-{len(requests)}"
        requests.append({"case": json_format.MessageToDict(visit.case)})
        if len(requests) == count:
            return requests
    raise ValueError(f"only {len(requests)} distinct complaints in NHAMCS")


def write_cases(path: Path, count: int) -> Path:
    """Writes `count` mixed cases as a ghz data file; returns its path."""
    path.write_text(json.dumps(mixed_cases(count)))
    return path


@dataclass(frozen=True)
class Load:
    """One ghz run's figures."""

    calls: int
    codes: dict[str, int]
    requests_per_second: float
    p50_ms: float
    p99_ms: float

    @property
    def ok(self) -> int:
        return self.codes.get("OK", 0)

    def codes_text(self) -> str:
        return " ".join(f"{code}={n}" for code, n in sorted(self.codes.items(), key=lambda item: -item[1]))


def figures(report: dict[str, Any]) -> Load:
    latency = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    codes: dict[str, int] = {}
    for code, n in (report.get("statusCodeDistribution") or {}).items():
        name = _CODE_NAMES.get(code, code)
        codes[name] = codes.get(name, 0) + int(n)
    return Load(
        calls=int(report["count"]),
        codes=codes,
        requests_per_second=round(float(report["rps"]), 1),
        p50_ms=round(latency.get(50, 0.0), 2),
        p99_ms=round(latency.get(99, 0.0), 2),
    )


async def ghz(
    target: str,
    key: str,
    data_file: Path,
    *,
    call: str = CLASSIFY,
    concurrency: int = 50,
    connections: int = 4,
    seconds: float | None = None,
    total: int | None = None,
    timeout_seconds: float = 10,
) -> Load:
    """Runs ghz against `target` for `seconds` (waiting for the calls in flight) or `total` calls."""
    length = ["--duration", f"{seconds}s", "--duration-stop", "wait"] if seconds else ["--total", str(total or 1000)]
    process = await asyncio.create_subprocess_exec(
        find_ghz(), "--insecure", "--call", call, "--data-file", str(data_file),
        "--metadata", json.dumps({"authorization": f"Bearer {key}"}),
        "--concurrency", str(concurrency), "--connections", str(min(connections, concurrency)),
        "--timeout", f"{timeout_seconds}s", "--format", "json", *length, target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0 and not out:
        raise RuntimeError(f"ghz failed: {err.decode()}")
    return figures(json.loads(out))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns as wide as their widest cell."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
