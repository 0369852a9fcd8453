"""SIGTERM: health goes NOT_SERVING, in-flight calls finish, the process exits 0."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.e2e.processes import create_key, start_server
from tests.fake_llm import FakeLLM, Reply
from tests.integration.test_model_backends import route
from tests.support import make_case
from triage.v1 import classification_pb2
from triage.v1.admin_service_pb2 import STRATEGY_MOST_URGENT
from triage_client import AsyncTriageClient, InvalidArgument


async def _next_status(
    watch: grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
) -> int:
    response = await watch.read()
    assert isinstance(response, health_pb2.HealthCheckResponse)
    return response.status


async def test_sigterm_drains_in_flight_calls_and_exits_cleanly(tmp_path: Path) -> None:
    key = await create_key(tmp_path, "clinician")
    server = await start_server(tmp_path, TRIAGE_SHUTDOWN_GRACE_SECONDS="10")
    target = f"127.0.0.1:{server.port}"
    async with AsyncTriageClient(target, api_key=key) as client, grpc.aio.insecure_channel(target) as channel:
        await client.classify(make_case("cough", "30y"))  # creates the database
        # The health stubs' types omit HealthStub's methods; bind Watch directly.
        watch_method: grpc.aio.UnaryStreamMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        watch = watch_method(health_pb2.HealthCheckRequest(service=""))
        assert await _next_status(watch) == health_pb2.HealthCheckResponse.SERVING

        # Hold the database's write lock so that the next call is in flight,
        # waiting to write its audit record, when SIGTERM arrives.
        lock = sqlite3.connect(tmp_path / "triage.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        in_flight = asyncio.create_task(client.classify(make_case("CP", "67y")))
        await asyncio.sleep(0.5)
        assert not in_flight.done(), in_flight  # its repr shows how it ended

        server.process.send_signal(signal.SIGTERM)
        assert await _next_status(watch) == health_pb2.HealthCheckResponse.NOT_SERVING
        # A watch never ends by itself: one still open when the server stops is
        # cancelled by grpc, which logs that as an error (outside our code).
        watch.cancel()

        lock.execute("ROLLBACK")
        lock.close()
        classification = await in_flight
        assert classification.esi_level == classification_pb2.ESI_LEVEL_2

    async with asyncio.timeout(15):
        await server.read_log()
        assert await server.process.wait() == 0
    # The drained call's access-log line comes before the server reports it stopped.
    lifecycle = [e["event"] for e in server.log if e["event"] != "call"]
    assert lifecycle[-2:] == ["shutting down", "stopped"], server.log[-6:]


async def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    server = await start_server(tmp_path)

    server.process.send_signal(signal.SIGINT)

    async with asyncio.timeout(15):
        assert await server.process.wait() == 0


async def test_unknown_settings_variables_are_reported(tmp_path: Path) -> None:
    # The web tier's settings may share the server's environment (one compose file): they are not typos.
    server = await start_server(tmp_path, TRIAGE_PROT="50051", TRIAGE_WEB_PORT="8080")
    server.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        await server.read_log()
        await server.process.wait()

    warnings = [e for e in server.log if e["event"] == "ignoring unknown TRIAGE_* variables"]
    assert len(warnings) == 1
    assert warnings[0]["variables"] == ["TRIAGE_PROT"]


async def test_workers_share_one_port_and_all_stop_on_sigterm(tmp_path: Path) -> None:
    key = await create_key(tmp_path, "service")
    server = await start_server(tmp_path, TRIAGE_WORKERS="2")
    await server.wait_for("serving", count=2)
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
        levels = {(await client.classify(make_case("CP", "67y"))).esi_level for _ in range(20)}
    assert levels == {classification_pb2.ESI_LEVEL_2}

    server.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        await server.read_log()
        assert await server.process.wait() == 0
    events = [e["event"] for e in server.log]
    assert events.count("serving") == 2
    assert events.count("stopped") == 2
    assert events[-1] == "workers stopped"


async def test_patient_content_never_reaches_the_log(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """At DEBUG, with B, C and the narrative going to a model and cases stored: no marker in any line."""
    marker = "zq-marker-4417"
    fake_llm.defaults["high_risk"] = Reply(content='{"high_risk": false, "reasons": []}')
    fake_llm.defaults["resources"] = Reply(content='{"resources": []}')
    fake_llm.defaults["narrative"] = Reply(chunks=("A narrative.",))
    key = await create_key(tmp_path, "clinician")
    admin_key = await create_key(tmp_path, "admin")
    server = await start_server(
        tmp_path,
        TRIAGE_LOG_LEVEL="DEBUG",
        TRIAGE_OPENAI_PROVIDERS=json.dumps({"fake": {"base_url": fake_llm.url}}),
        TRIAGE_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
    )
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=admin_key) as admin:
        for step in ("high_risk", "resources", "narrative"):
            await route(admin, step, STRATEGY_MOST_URGENT)
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
        classified = await client.classify(make_case(f"abdominal pain {marker}", "60y", history=f"note {marker}"))
        explained = [e async for e in client.explain(make_case(f"{marker} vomiting", "3y"))]
        assert explained[-2].HasField("narrative")
        by_id = [e async for e in client.explain(classification_id=classified.classification_id)]
        assert by_id
        with pytest.raises(InvalidArgument):
            await client.classify(make_case(marker * 200, "200y"))
    server.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        await server.read_log()
        await server.process.wait()

    # The model was asked about the case, marker and all: the path that could leak it ran.
    assert any(marker in json.dumps(request) for request in fake_llm.requests)
    log_text = "\n".join(json.dumps(entry) for entry in server.log)
    assert "stopped" in log_text
    assert marker not in log_text
    # The access log saw every call, and what it says of each is ids, codes and levels.
    calls = [entry for entry in server.log if entry["event"] == "call" and "Admin" not in str(entry["method"])]
    assert [c["code"] for c in calls] == ["OK", "OK", "OK", "INVALID_ARGUMENT"]
    assert {"request_id", "method", "duration_ms", "key_id", "role", "esi_level"} <= set(calls[0])
