"""`make bench`: the same ghz load against a bare echo server and the triage server.

Starts the servers, warms them up, runs bench/classify.json and
bench/explain.json at the same concurrency against each, and prints req/s and
p50/p95/p99 with the triage/echo ratio, then the triage server's memory after
the run (at least 50,000 calls). Results are saved under bench/results/.
Targets (issue 2): Classify >= 60 % of echo req/s at concurrency 50, p99 under
25 ms, server memory under 200 MB after 50,000 calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.workers import reserved_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GHZ_VERSION = "v0.120.0"
TARGET_RATIO = 0.60
TARGET_P99_MS = 25.0
TARGET_RSS_MB = 200.0
# The triage server's own interceptors (server/app.py), mirrored by the noop echo server.
CHAIN_LENGTH = 6
SERVERS = ("echo", "noop", "triage")
# One caller at a time: what a single call takes, without queueing behind others.
ONE_CALLER_CALLS = 2_000


@dataclass
class Run:
    """One ghz run's figures."""

    server: str
    call: str
    total: int
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


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


def start(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Starts a server that logs a JSON line {"event": "serving", "port": N}; returns it and its port.

    Its output goes to a file, never a pipe: a pipe nobody reads would stall the server.
    """
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "serving":
                return process, int(entry["port"])
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{command} did not start:\n{log.read_text()}")


def ghz(binary: str, config: str, port: int, total: int, concurrency: int, metadata: str) -> dict[str, Any]:
    # ghz refuses more connections (the config's) than concurrent calls.
    connections = min(int(json.loads((HERE / config).read_text()).get("connections", 1)), concurrency)
    completed = subprocess.run(
        [binary, "--config", str(HERE / config), "--total", str(total), "--concurrency", str(concurrency),
         "--connections", str(connections), "--metadata", metadata, "--format", "json",
         f"127.0.0.1:{port}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(completed.stdout)
    return report


def figures(server: str, call: str, report: dict[str, Any]) -> Run:
    latency = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    codes = report.get("statusCodeDistribution") or {}
    return Run(
        server=server,
        call=call,
        total=int(report["count"]),
        requests_per_second=round(float(report["rps"]), 1),
        p50_ms=round(latency.get(50, 0.0), 2),
        p95_ms=round(latency.get(95, 0.0), 2),
        p99_ms=round(latency.get(99, 0.0), 2),
        errors=sum(n for code, n in codes.items() if code != "OK"),
    )


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the server's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process and its workers, in MB."""
    rss = peak = 0
    for member in process_tree(pid):
        status = Path(f"/proc/{member}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        rss += int(fields["VmRSS"].split()[0])
        peak += int(fields["VmHWM"].split()[0])
    return rss / 1024, peak / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classify-total", type=int, default=50_000, help="Classify calls per server")
    parser.add_argument("--explain-total", type=int, default=10_000, help="Explain calls per server")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2_000, help="calls per server before measuring")
    parser.add_argument("--workers", type=int, default=1, help="processes per server (echo and triage alike)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    binary = find_ghz()
    workdir = Path(tempfile.mkdtemp(prefix="triage-bench-"))
    python = sys.executable
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    # "echo" does nothing; "noop" also passes every call through as many
    # interceptors as the triage server has, each doing nothing.
    echo_ports: dict[str, int] = {}
    echoes = []
    for name, interceptors in (("echo", 0), ("noop", CHAIN_LENGTH)):
        with reserved_port("127.0.0.1", 0) as port:
            echoes += [
                start([python, "-m", "bench.echo_server", "--port", str(port),
                       "--noop-interceptors", str(interceptors)], env, HERE.parent,
                      workdir / f"{name}-{i}.log")[0]
                for i in range(args.workers)
            ]  # fmt: skip
        echo_ports[name] = port
    triage_env = env | {
        "TRIAGE_PORT": "0",
        "TRIAGE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "TRIAGE_SECRET_KEY": "bench",
        "TRIAGE_WORKERS": str(args.workers),
        # Every call is a new classification: the figures are the uncached path's.
        "TRIAGE_CACHE_TTL_SECONDS": "0",
    }
    subprocess.run([python, "-m", "server", "migrate"], cwd=workdir, env=triage_env, check=True, capture_output=True)
    # The whole interceptor chain runs: a service key, with a limit the load never reaches.
    created = subprocess.run(
        [python, "-m", "server", "keys", "create", "--name", "bench", "--role", "service",
         "--rate-limit", "1000000/second"],
        cwd=workdir, env=triage_env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    # Both servers get the same header, so that both parse the same bytes.
    metadata = json.dumps({"authorization": f"Bearer {created.stdout.splitlines()[-1]}"})
    triage, triage_port = start([python, "-m", "server", "serve"], triage_env, workdir, workdir / "triage.log")
    runs: list[Run] = []
    try:
        servers = {**echo_ports, "triage": triage_port}
        for port in servers.values():
            ghz(binary, "classify.json", port, args.warmup, args.concurrency, metadata)
        # Alternate servers call by call so that drift in the machine affects both.
        for config, call, total in (
            ("classify.json", "Classify", args.classify_total),
            ("explain.json", "Explain", args.explain_total),
        ):
            for name, port in servers.items():
                runs.append(figures(name, call, ghz(binary, config, port, total, args.concurrency, metadata)))
        alone = {
            name: figures(name, "Classify", ghz(binary, "classify.json", servers[name], ONE_CALLER_CALLS, 1, metadata))
            for name in ("echo", "triage")
        }
        rss_mb, peak_mb = memory_mb(triage.pid)
        served = args.warmup + args.classify_total + args.explain_total + ONE_CALLER_CALLS
    finally:
        for process in (*echoes, triage):
            process.send_signal(signal.SIGTERM)
        for process in (*echoes, triage):
            process.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    by_key = {(r.server, r.call): r for r in runs}
    print(
        f"\nghz {GHZ_VERSION}, concurrency {args.concurrency}, {args.workers} process(es) per server, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print(f"{'call':<10}{'server':<8}{'calls':>8}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    ratios: dict[str, float] = {}
    for call in ("Classify", "Explain"):
        for name in SERVERS:
            r = by_key[(name, call)]
            print(
                f"{call:<10}{name:<8}{r.total:>8}{r.requests_per_second:>10.0f}{r.p50_ms:>9.2f}"
                f"{r.p95_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
            )
        echo = by_key[("echo", call)].requests_per_second
        ratios[call] = by_key[("triage", call)].requests_per_second / echo
        mechanism = by_key[("noop", call)].requests_per_second / echo
        print(f"{call:<10}{'ratio':<8}{'':>8}{ratios[call]:>10.0%}   (noop interceptors alone: {mechanism:.0%})")
    triage_alone, echo_alone = alone["triage"], alone["echo"]
    print(
        f"\nClassify, one caller at a time: triage p50 {triage_alone.p50_ms:.2f} ms, p99 {triage_alone.p99_ms:.2f} ms"
        f" (echo {echo_alone.p50_ms:.2f} / {echo_alone.p99_ms:.2f} ms)"
    )
    print(f"\ntriage server memory after {served:,} calls: {rss_mb:.0f} MB resident (peak {peak_mb:.0f} MB)")

    classify = by_key[("triage", "Classify")]
    targets = {
        f"Classify >= {TARGET_RATIO:.0%} of echo req/s": ratios["Classify"] >= TARGET_RATIO,
        f"Classify p99 < {TARGET_P99_MS:g} ms": classify.p99_ms < TARGET_P99_MS,
        f"memory < {TARGET_RSS_MB:g} MB after 50,000 calls": peak_mb < TARGET_RSS_MB and served >= 50_000,
        "no errors": all(r.errors == 0 for r in runs),
    }
    for name, met in targets.items():
        print(f"  {'met ' if met else 'MISSED'}  {name}")

    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "time": stamp,
        "ghz": GHZ_VERSION,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "runs": [asdict(r) for r in runs],
        "one_caller": [asdict(r) for r in alone.values()],
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "memory_mb": {"resident": round(rss_mb, 1), "peak": round(peak_mb, 1), "after_calls": served},
        "targets": targets,
    }
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nsaved {path.relative_to(HERE.parent)}")
    return 0 if all(targets.values()) or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
