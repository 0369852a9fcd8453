"""`make bench`: the same ghz load against a bare echo server and the triage server.

Starts the servers, warms them up, runs bench/classify.json and
bench/explain.json at the same concurrency against each, and Classify over
500 real cases with distinct complaints (NHAMCS, "Mixed") against the echo
and triage servers, and prints req/s and p50/p95/p99 with the triage/echo
ratio, then the triage server's memory after the run (at least 50,000 calls).
Then, at scale (issue 10): Explain at 5,000 calls in flight, and Classify with
B routed to a model server that answers after 1 s (bench/fake_model.py) at
1,000 and 5,000 in flight, with status counts and p50. Results are saved
under bench/results/.
Targets (issue 10): Classify, rules only, at concurrency 50 at least 2,000
calls/s per process and at least 30 % of echo; one caller at a time p50 at
most 1.0 ms; at 5,000 in flight no errors on Explain or on Classify routed to
the 1 s model (callers wait as long as that takes: a 60 s deadline); at 1,000
in flight the model path adds at most 5 ms at p50 over the model's own second;
server memory under 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench import stack
from bench.load import GHZ_VERSION, Load, find_ghz, write_cases
from bench.load import figures as load_figures
from bench.stack import process_memory_mb, process_tree
from server.workers import reserved_port
from triage.v1.admin_service_pb2 import STRATEGY_MOST_URGENT, BackendPrice
from triage_client import AsyncTriageClient

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_RATIO = 0.30
TARGET_CALLS_PER_SECOND = 2_000
TARGET_ONE_CALLER_P50_MS = 1.0
TARGET_MODEL_OVERHEAD_P50_MS = 5.0
TARGET_RSS_MB = 200.0
# The scale runs' callers wait this long: 5,000 calls in flight take seconds to drain through one process.
SCALE_TIMEOUT = "60s"
# The triage server's own interceptors (server/app.py), mirrored by the noop echo server.
CHAIN_LENGTH = 6
SERVERS = ("echo", "noop", "triage")
# One caller at a time: what a single call takes, without queueing behind others.
ONE_CALLER_CALLS = 2_000
# Calls in flight in the scale runs (issue 10), and how long the model takes to answer there.
SCALE_IN_FLIGHT = 5_000
MODEL_SECONDS = 1.0


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


def ghz(
    binary: str,
    config: str,
    port: int,
    total: int,
    concurrency: int,
    metadata: str,
    *,
    connections: int | None = None,
    data_file: Path | None = None,
    timeout: str | None = None,
) -> dict[str, Any]:
    """One ghz run of a config in bench/, its data replaced by `data_file`'s if given; ghz's JSON report."""
    # ghz refuses more connections (the config's) than concurrent calls.
    connections = min(connections or int(json.loads((HERE / config).read_text()).get("connections", 1)), concurrency)
    data = ["--data-file", str(data_file)] if data_file else []
    data += ["--timeout", timeout] if timeout else []
    completed = subprocess.run(
        [binary, "--config", str(HERE / config), "--total", str(total), "--concurrency", str(concurrency),
         "--connections", str(connections), "--metadata", metadata, "--format", "json", *data,
         f"127.0.0.1:{port}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if not completed.stdout:
        raise RuntimeError(f"ghz failed: {completed.stderr}")
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


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process and its workers, in MB."""
    each = [process_memory_mb(member) for member in process_tree(pid)]
    return sum(rss for rss, _ in each), sum(peak for _, peak in each)


@dataclass(frozen=True)
class Scale:
    call: str
    in_flight: int
    load: Load


def at_scale(binary: str, port: int, metadata: str, admin_key: str, total: int) -> list[Scale]:
    """Explain rules-only at 5,000 in flight; then B routed to the 1 s model, Classify at 1,000 and 5,000."""
    connections = SCALE_IN_FLIGHT // 5
    runs = [
        Scale("Explain", SCALE_IN_FLIGHT, load_figures(
            ghz(binary, "explain.json", port, total, SCALE_IN_FLIGHT, metadata, connections=connections,
                timeout=SCALE_TIMEOUT))),
    ]  # fmt: skip
    asyncio.run(_route_b_to_model(port, admin_key))
    for in_flight in (1_000, SCALE_IN_FLIGHT):
        report = ghz(binary, "classify.json", port, total, in_flight, metadata, connections=in_flight // 5,
                     timeout=SCALE_TIMEOUT)  # fmt: skip
        runs.append(Scale(f"Classify, B by a {MODEL_SECONDS:g} s model", in_flight, load_figures(report)))
    return runs


async def _route_b_to_model(port: int, admin_key: str) -> None:
    async with AsyncTriageClient(f"127.0.0.1:{port}", api_key=admin_key) as client:
        price = BackendPrice(backend=f"{stack.MODEL_PROVIDER}:slow", input_usd_micros_per_million_tokens=1)
        await stack.route_to_model(client, ("high_risk",), STRATEGY_MOST_URGENT, price=price)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classify-total", type=int, default=50_000, help="Classify calls per server")
    parser.add_argument("--explain-total", type=int, default=10_000, help="Explain calls per server")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2_000, help="calls per server before measuring")
    parser.add_argument("--workers", type=int, default=1, help="processes per server (echo and triage alike)")
    parser.add_argument("--mixed-cases", type=int, default=500, help="distinct NHAMCS cases in the mixed run")
    parser.add_argument("--mixed-total", type=int, default=20_000, help="Classify calls per server, mixed cases")
    parser.add_argument("--scale-total", type=int, default=10_000, help="calls of each run at 5,000 in flight")
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
    # A model server that answers after a second: Classify with B routed to it, at scale.
    model = stack.model_server(workdir, stack.free_port(), delay_seconds=MODEL_SECONDS)
    asyncio.run(stack.start_model(model))
    triage_env = (
        env
        | stack.model_environment(int(model.argv[model.argv.index("--port") + 1]))
        | {
            "TRIAGE_PORT": "0",
            "TRIAGE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
            "TRIAGE_SECRET_KEY": "bench",
            "TRIAGE_WORKERS": str(args.workers),
            # Every call is a new classification: the figures are the uncached path's.
            "TRIAGE_CACHE_TTL_SECONDS": "0",
        }
    )
    subprocess.run([python, "-m", "server", "migrate"], cwd=workdir, env=triage_env, check=True, capture_output=True)
    # The whole interceptor chain runs: a service key, with a limit the load never reaches.
    created = subprocess.run(
        [python, "-m", "server", "keys", "create", "--name", "bench", "--role", "service",
         "--rate-limit", "1000000/second"],
        cwd=workdir, env=triage_env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    # Both servers get the same header, so that both parse the same bytes.
    metadata = json.dumps({"authorization": f"Bearer {created.stdout.splitlines()[-1]}"})
    admin_key = subprocess.run(
        [python, "-m", "server", "keys", "create", "--name", "bench-admin", "--role", "admin"],
        cwd=workdir, env=triage_env, check=True, capture_output=True, text=True,
    ).stdout.splitlines()[-1]  # fmt: skip
    mixed = write_cases(workdir / "mixed.json", args.mixed_cases)
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
        # Real cases, each complaint different: the complaint memo mostly misses.
        for name in ("echo", "triage"):
            report = ghz(binary, "classify.json", servers[name], args.mixed_total, args.concurrency, metadata,
                         data_file=mixed)  # fmt: skip
            runs.append(figures(name, "Mixed", report))
        alone = {
            name: figures(name, "Classify", ghz(binary, "classify.json", servers[name], ONE_CALLER_CALLS, 1, metadata))
            for name in ("echo", "triage")
        }
        rss_mb, peak_mb = memory_mb(triage.pid)
        served = args.warmup + args.classify_total + args.explain_total + args.mixed_total + ONE_CALLER_CALLS
        scale = at_scale(binary, triage_port, metadata, admin_key, args.scale_total)
    finally:
        for process in (*echoes, triage):
            process.send_signal(signal.SIGTERM)
        for process in (*echoes, triage):
            process.wait(timeout=30)
        asyncio.run(model.stop())
        shutil.rmtree(workdir, ignore_errors=True)

    by_key = {(r.server, r.call): r for r in runs}
    print(
        f"\nghz {GHZ_VERSION}, concurrency {args.concurrency}, {args.workers} process(es) per server, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print(f"{'call':<10}{'server':<8}{'calls':>8}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    ratios: dict[str, float] = {}
    for call in ("Classify", "Mixed", "Explain"):
        for name in SERVERS:
            if (name, call) not in by_key:
                continue
            r = by_key[(name, call)]
            print(
                f"{call:<10}{name:<8}{r.total:>8}{r.requests_per_second:>10.0f}{r.p50_ms:>9.2f}"
                f"{r.p95_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
            )
        echo = by_key[("echo", call)].requests_per_second
        ratios[call] = by_key[("triage", call)].requests_per_second / echo
        noop = by_key.get(("noop", call))
        mechanism = f"   (noop interceptors alone: {noop.requests_per_second / echo:.0%})" if noop else ""
        print(f"{call:<10}{'ratio':<8}{'':>8}{ratios[call]:>10.0%}{mechanism}")
    print(f"(Mixed: Classify over {args.mixed_cases} NHAMCS cases with distinct complaints, in turn)")
    triage_alone, echo_alone = alone["triage"], alone["echo"]
    print(
        f"\nClassify, one caller at a time: triage p50 {triage_alone.p50_ms:.2f} ms, p99 {triage_alone.p99_ms:.2f} ms"
        f" (echo {echo_alone.p50_ms:.2f} / {echo_alone.p99_ms:.2f} ms)"
    )
    print(f"\ntriage server memory after {served:,} calls: {rss_mb:.0f} MB resident (peak {peak_mb:.0f} MB)")
    print(f"\nAt scale: {args.scale_total:,} calls a run, one process; the model answers in {MODEL_SECONDS:g} s")
    print(f"{'call':<32}{'in flight':>10}{'calls':>8}{'p50 ms':>10}{'p99 ms':>10}  codes")
    for row in scale:
        load = row.load
        print(f"{row.call:<32}{row.in_flight:>10}{load.calls:>8}{load.p50_ms:>10.1f}{load.p99_ms:>10.1f}  "
              f"{load.codes_text()}")  # fmt: skip

    classify = by_key[("triage", "Classify")]
    model_at_1000 = next(row.load for row in scale if row.in_flight == 1_000)
    targets = {
        f"Classify >= {TARGET_CALLS_PER_SECOND:,} calls/s": classify.requests_per_second >= TARGET_CALLS_PER_SECOND,
        f"Classify >= {TARGET_RATIO:.0%} of echo req/s": ratios["Classify"] >= TARGET_RATIO,
        f"one caller p50 <= {TARGET_ONE_CALLER_P50_MS:g} ms": triage_alone.p50_ms <= TARGET_ONE_CALLER_P50_MS,
        f"model path adds <= {TARGET_MODEL_OVERHEAD_P50_MS:g} ms at p50, 1,000 in flight": (
            model_at_1000.p50_ms <= MODEL_SECONDS * 1000 + TARGET_MODEL_OVERHEAD_P50_MS
        ),
        f"memory < {TARGET_RSS_MB:g} MB after 50,000 calls": peak_mb < TARGET_RSS_MB and served >= 50_000,
        "no errors at concurrency 50": all(r.errors == 0 for r in runs),
        f"no errors at {SCALE_IN_FLIGHT:,} in flight": all(row.load.ok == row.load.calls for row in scale),
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
        "mixed_cases": args.mixed_cases,
        "at_scale": [{"call": s.call, "in_flight": s.in_flight, **asdict(s.load)} for s in scale],
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
