"""Every metric a dashboard panel or an alerting rule reads is one the server exports.

A real `triage-server serve` with two workers (multiprocess metrics, the
Docker default) answers a few calls (one routed to a model, one refused by a
rate limit, one refused for overload, one that opens a model's circuit), and
its /metrics is scraped. In multiprocess mode a labelled metric appears only
once it has a sample, so this also shows that what the panels read does
happen.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import process_memory_mb, process_tree
from tests.deploy.queries import queried_names
from tests.e2e.processes import ServerProcess, create_key, start_server
from tests.e2e.test_scale_out import _free_port
from tests.fake_llm import Reply, answer, start_fake_llm
from tests.integration.test_model_backends import route
from tests.support import make_case
from triage.v1.admin_service_pb2 import STRATEGY_MOST_URGENT
from triage_client import AsyncTriageClient, TriageError

pytestmark = pytest.mark.timeout(120)


def _samples(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _measure(supervisor: int) -> tuple[list[int], float]:
    """The worker processes under `supervisor`, and the resident memory of all of them with it, in bytes."""
    _, *children = process_tree(supervisor)
    # Workers are spawned (multiprocessing's resource tracker is a child too, and no worker).
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return workers, sum(process_memory_mb(pid)[0] for pid in [supervisor, *workers]) * 1024 * 1024


async def _exercise(server: ServerProcess, directory: Path) -> None:
    """Calls that make every queried metric appear."""
    admin = await create_key(directory, "admin", "--rate-limit", "1000/second")
    limited = await create_key(directory, "service", "--rate-limit", "1/minute")
    target = f"127.0.0.1:{server.port}"
    # One connection: the calls below reach one worker, which the routing must have reached.
    async with AsyncTriageClient(target, api_key=admin) as client:
        await route(client, "high_risk", STRATEGY_MOST_URGENT)
        await asyncio.sleep(2)  # every worker reloads the configuration within a second
        await client.classify(make_case("headache", "30y"))  # the model answers (default)
        await client.classify(make_case("headache", "30y"))  # a cache hit
        # Two at once past TRIAGE_MAX_IN_FLIGHT_CALLS=1 while the model takes its time: one is refused.
        slow = [make_case("headache", f"{age}y") for age in (41, 42)]
        await asyncio.gather(*(client.classify(case, timeout=5) for case in slow), return_exceptions=True)
        await client.classify(make_case("headache", "50y"))  # the model fails: its circuit opens
    async with AsyncTriageClient(target, api_key=limited) as client:
        await client.classify(make_case("ankle injury", "30y"))
        with pytest.raises(TriageError):
            await client.classify(make_case("ankle injury", "30y"))


async def test_every_queried_metric_is_exported_and_every_worker_is_measured(tmp_path: Path) -> None:
    fake, http = start_fake_llm()
    fake.defaults["high_risk"] = answer(high_risk=False, reasons=[])
    fake.plan(
        "high_risk",
        Reply(content='{"high_risk": false, "reasons": []}'),
        Reply(content='{"high_risk": false, "reasons": []}', delay_seconds=1.5),
        Reply(content='{"high_risk": false, "reasons": []}', delay_seconds=1.5),
        Reply(status=400),
    )
    metrics_port = _free_port()
    server = await start_server(
        tmp_path,
        TRIAGE_WORKERS="2",
        TRIAGE_METRICS_PORT=str(metrics_port),
        TRIAGE_OPENAI_PROVIDERS=json.dumps({"fake": {"base_url": fake.url}}),
        TRIAGE_CIRCUIT_FAILURE_THRESHOLD="1",
        TRIAGE_MAX_IN_FLIGHT_CALLS="1",
    )
    try:
        await server.wait_for("serving", count=2)
        await _exercise(server, tmp_path)
        samples = await asyncio.to_thread(_samples, metrics_port)
        workers, memory = await asyncio.to_thread(_measure, server.process.pid)
    finally:
        server.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await server.read_log()
            await server.process.wait()
        http.shutdown()
        http.server_close()

    missing = queried_names() - set(samples)
    assert not missing, f"queried but not exported: {sorted(missing)}"
    # The supervisor and both workers, each by its slot; their memory is what /proc says of them.
    resident = samples["process_resident_memory_bytes"]
    assert sorted(labels["worker"] for labels, _ in resident) == ["0", "1", "supervisor"]
    assert len(workers) == 2
    assert sum(value for _, value in resident) == pytest.approx(memory, rel=0.25)
