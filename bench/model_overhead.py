"""`python -m bench.model_overhead`: what routing steps to a model adds to a Classify call.

Starts a chat-completions server that answers at once (tests/fake_llm.py) and
the triage server, then runs the same ghz Classify load twice: rules only,
and with decision points B and C routed to the model (most_urgent). The
difference is our side of a model call (prompt, SDK, HTTP, validation,
budget, ledger), not a model's latency. The cache is off, so every call asks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import stack
from bench.load import find_ghz
from bench.run import ghz, start
from tests.fake_llm import answer, start_fake_llm
from triage.v1 import admin_service_pb2
from triage.v1.admin_service_pb2 import BackendPrice
from triage_client import AsyncTriageClient

MODEL = "fake:instant"


async def route_to_model(port: int, key: str) -> None:
    async with AsyncTriageClient(f"127.0.0.1:{port}", api_key=key) as client:
        price = BackendPrice(backend=MODEL, input_usd_micros_per_million_tokens=1)
        steps = ("high_risk", "resources")
        await stack.route_to_model(client, steps, admin_service_pb2.STRATEGY_MOST_URGENT, price=price)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    binary = find_ghz()
    fake, http = start_fake_llm()
    fake.defaults["high_risk"] = answer(high_risk=False, reasons=[])
    fake.defaults["resources"] = answer(resources=[{"kind": "labs", "reason": "troponin"}])
    workdir = Path(tempfile.mkdtemp(prefix="triage-model-bench-"))
    env = os.environ | {
        "PYTHONUNBUFFERED": "1",
        "TRIAGE_PORT": "0",
        "TRIAGE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "TRIAGE_SECRET_KEY": "bench",
        "TRIAGE_CACHE_TTL_SECONDS": "0",
        "TRIAGE_OPENAI_PROVIDERS": json.dumps({"fake": {"base_url": fake.url}}),
    }
    subprocess.run([sys.executable, "-m", "server", "migrate"], cwd=workdir, env=env, check=True, capture_output=True)
    created = subprocess.run(
        [sys.executable, "-m", "server", "keys", "create", "--name", "bench", "--role", "admin",
         "--rate-limit", "1000000/second"],
        cwd=workdir, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    key = created.stdout.splitlines()[-1]
    metadata = json.dumps({"authorization": f"Bearer {key}"})
    server, port = start([sys.executable, "-m", "server", "serve"], env, workdir, workdir / "triage.log")
    try:
        ghz(binary, "classify.json", port, 1_000, args.concurrency, metadata)
        rules = ghz(binary, "classify.json", port, args.total, args.concurrency, metadata)
        asyncio.run(route_to_model(port, key))
        ghz(binary, "classify.json", port, 1_000, args.concurrency, metadata)
        model = ghz(binary, "classify.json", port, args.total, args.concurrency, metadata)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        http.shutdown()
    print(f"\nClassify at concurrency {args.concurrency}, {args.total} calls each, model answering at once:\n")
    for name, report in (("rules only", rules), ("B and C by model", model)):
        latency = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"]}
        print(
            f"  {name:<18} {report['rps']:>7.0f} req/s   p50 {latency[50]:6.2f} ms   p99 {latency[99]:6.2f} ms   "
            f"errors {sum(n for c, n in report['statusCodeDistribution'].items() if c != 'OK')}"
        )
    per_call_ms = (1 / model["rps"] - 1 / rules["rps"]) * 1000
    share = model["rps"] / rules["rps"]
    print(f"\n  model-routed throughput {share:.0%} of rules-only; {per_call_ms:.2f} ms more per call")
    print(f"  the model server saw {len(fake.asked('high_risk'))} B and {len(fake.asked('resources'))} C requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
