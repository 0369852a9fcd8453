"""Several server processes: shared rate-limit counts, one metrics view, revocations and routing everywhere."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.processes import ServerProcess, create_key, start_server
from tests.fake_llm import Reply, start_fake_llm
from tests.integration.test_model_backends import route
from tests.redis_server import RedisServer
from tests.support import eventually, make_case
from triage.v1.admin_service_pb2 import STRATEGY_MOST_URGENT, RevokeApiKeyRequest
from triage_client import AsyncTriageClient, ResourceExhausted, Unauthenticated

CASE = make_case("ankle injury", "30y")


async def _stop(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        await server.read_log()
        assert await server.process.wait() == 0


async def test_two_server_processes_sharing_redis_allow_exactly_the_limit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    key = await create_key(tmp_path, "service", "--rate-limit", "20/minute")
    servers = [await start_server(tmp_path, TRIAGE_REDIS_URL=redis_server.url) for _ in range(2)]
    try:
        clients = [AsyncTriageClient(f"127.0.0.1:{s.port}", api_key=key) for s in servers]
        # 100 simultaneous calls, half to each process.
        outcomes = await asyncio.gather(*(clients[i % 2].classify(CASE) for i in range(100)), return_exceptions=True)
        for client in clients:
            await client.close()
    finally:
        for server in servers:
            await _stop(server)

    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(refused) == 80
    assert sum(1 for o in outcomes if not isinstance(o, BaseException)) == 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, as the metrics endpoint on `port` serves it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_metrics_add_up_over_all_worker_processes(tmp_path: Path) -> None:
    key = await create_key(tmp_path, "service")
    metrics_port = _free_port()
    server = await start_server(tmp_path, TRIAGE_WORKERS="2", TRIAGE_METRICS_PORT=str(metrics_port))
    await server.wait_for("serving", count=2)  # a worker still starting would get no connection
    try:
        # New connections spread over the workers (SO_REUSEPORT); each client opens its own.
        for _ in range(20):
            async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
                for _ in range(3):
                    await client.classify(CASE)
        served = await asyncio.to_thread(
            _metric, metrics_port, "triage_requests_total", code="OK", method="/triage.v1.ClassifyService/Classify"
        )
    finally:
        await _stop(server)

    assert served == 60
    # Both workers served some of them, so the sum really spans processes.
    assert len({entry["pid"] for entry in server.log if entry["event"] == "call"}) == 2


async def test_a_key_revoked_through_one_process_stops_working_on_another_within_5_seconds(tmp_path: Path) -> None:
    admin_key = await create_key(tmp_path, "admin")
    doomed = await create_key(tmp_path, "clinician")
    first, second = [await start_server(tmp_path) for _ in range(2)]
    try:
        async with (
            AsyncTriageClient(f"127.0.0.1:{first.port}", api_key=admin_key) as admin,
            AsyncTriageClient(f"127.0.0.1:{second.port}", api_key=doomed) as client,
        ):
            await client.classify(CASE)
            await admin.revoke_api_key(RevokeApiKeyRequest(key_id=doomed[4:30]))

            async def refused() -> bool:
                try:
                    await client.classify(CASE)
                except Unauthenticated:
                    return True
                return False

            await eventually(refused, within_seconds=5)
    finally:
        for server in (first, second):
            await _stop(server)


async def test_routing_a_step_to_a_model_reaches_every_process_within_a_second(tmp_path: Path) -> None:
    fake, http = start_fake_llm()
    fake.defaults["high_risk"] = Reply(content='{"high_risk": true, "reasons": ["worst headache of life"]}')
    admin_key = await create_key(tmp_path, "admin", "--rate-limit", "1000/second")
    environment = {"TRIAGE_OPENAI_PROVIDERS": json.dumps({"fake": {"base_url": fake.url}})}
    first, second = [await start_server(tmp_path, **environment) for _ in range(2)]
    try:
        async with (
            AsyncTriageClient(f"127.0.0.1:{first.port}", api_key=admin_key) as admin,
            AsyncTriageClient(f"127.0.0.1:{second.port}", api_key=admin_key) as elsewhere,
        ):
            headache = make_case("headache", "30y")
            assert (await elsewhere.classify(headache)).esi_level != 2
            await route(admin, "high_risk", STRATEGY_MOST_URGENT)

            async def routed() -> bool:
                # A new case each time: a cached answer would not ask the model.
                case = make_case("headache", f"{30 + len(fake.requests)}y")
                return (await elsewhere.classify(case)).esi_level == 2

            await eventually(routed, within_seconds=1.0)
    finally:
        for server in (first, second):
            await _stop(server)
        http.shutdown()
        http.server_close()
