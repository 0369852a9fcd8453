"""Request ids, the access log, Prometheus metrics and OTLP traces, without patient content."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.ids import is_id
from server.metrics import serve_metrics
from tests.conftest import issue_test_key
from tests.support import eventually, make_case
from triage.v1 import classify_service_pb2, classify_service_pb2_grpc
from triage_client import AsyncTriageClient, ResourceExhausted, Unauthenticated

MARKER = "zq-marker-9031"
CASE = make_case(f"chest pain {MARKER}", "60y", history=f"note {MARKER}")
CLASSIFY = "/triage.v1.ClassifyService/Classify"


async def _classify_with_request_id(target: str, key: str, request_id: str | None) -> tuple[str, str]:
    """The response's x-request-id and the classification id."""
    metadata = [("authorization", f"Bearer {key}")]
    if request_id is not None:
        metadata.append(("x-request-id", request_id))
    async with aio.insecure_channel(target) as channel:
        call = classify_service_pb2_grpc.ClassifyServiceStub(channel).Classify(
            classify_service_pb2.ClassifyRequest(case=CASE), metadata=metadata
        )
        response = await call
        headers = dict(await call.initial_metadata())
    return str(headers["x-request-id"]), response.classification.classification_id


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("ehr-7f3a:42", True), (None, False), ("has spaces in it", False), ("x" * 65, False)],
    ids=["callers-own", "absent", "unsafe", "too-long"],
)
async def test_every_call_has_a_request_id_also_in_its_audit_record(
    server: TriageServer, keys: dict[Role, str], client: AsyncTriageClient, sent: str | None, kept: bool
) -> None:
    request_id, classification_id = await _classify_with_request_id(
        f"127.0.0.1:{server.port}", keys[Role.CLINICIAN], sent
    )

    assert request_id == sent if kept else is_id(request_id)
    [event] = [e async for e in client.iter_audit_events()]
    assert (event.classification_id, event.request_id) == (classification_id, request_id)
    assert event.key_id  # who asked


async def test_one_access_log_line_per_call_with_no_patient_content(
    server: TriageServer, keys: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triage.access")
    target = f"127.0.0.1:{server.port}"
    async with AsyncTriageClient(target, api_key=keys[Role.CLINICIAN]) as client:
        classification = await client.classify(CASE)
    async with AsyncTriageClient(target, api_key="tri_wrong") as stranger:
        with pytest.raises(Unauthenticated):
            await stranger.classify(CASE)

    def access_lines() -> list[Any]:
        return [r.fields for r in caplog.records if r.name == "triage.access"]  # type: ignore[attr-defined]

    async def both_logged() -> bool:
        # A refused call's line is written as its status goes out: the caller may see it first.
        return len(access_lines()) >= 2

    await eventually(both_logged, within_seconds=5)
    lines = access_lines()
    assert [(line["method"], line["code"]) for line in lines] == [(CLASSIFY, "OK"), (CLASSIFY, "UNAUTHENTICATED")]
    served, refused = lines
    assert served["role"] == "clinician"
    assert served["key_id"] == keys[Role.CLINICIAN][4:30]
    assert served["esi_level"] == classification.esi_level
    assert served["duration_ms"] > 0
    assert is_id(str(served["request_id"]))
    assert refused["key_id"] == refused["role"] == ""
    assert MARKER not in caplog.text


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert MARKER not in text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_calls_levels_and_refusals(server: TriageServer, keys: dict[Role, str]) -> None:
    port = serve_metrics("127.0.0.1", 0)
    before = await asyncio.to_thread(_scrape, port)
    target = f"127.0.0.1:{server.port}"
    limited = await issue_test_key(server, Role.SERVICE, rate_limit="2/minute")
    async with AsyncTriageClient(target, api_key=limited) as client:
        levels = [(await client.classify(CASE)).esi_level for _ in range(2)]
        with pytest.raises(ResourceExhausted):
            await client.classify(CASE)
    after = await asyncio.to_thread(_scrape, port)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("triage_requests_total", method=CLASSIFY, code="OK") == 2
    assert grew("triage_requests_total", method=CLASSIFY, code="RESOURCE_EXHAUSTED") == 1
    assert grew("triage_request_duration_seconds_count", method=CLASSIFY) == 3
    assert grew("triage_rate_limited_total", role="service") == 1
    assert grew("triage_classifications_total", esi_level=str(levels[0])) == 2


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector: keeps what it is sent."""

    def __init__(self) -> None:
        self.exports: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exports.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    collector = Collector()
    server = aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield collector, port
    await server.stop(None)


async def test_traces_have_a_span_per_call_and_per_step_and_no_patient_content(
    settings: Settings, collector: tuple[Collector, int]
) -> None:
    received, port = collector
    server = TriageServer(settings.model_copy(update={"otlp_endpoint": f"http://127.0.0.1:{port}"}))
    await server.start()
    try:
        key = await issue_test_key(server, Role.CLINICIAN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            await client.classify(make_case(f"ankle sprain {MARKER}", "30y", history=MARKER))
    finally:
        await server.stop(grace_seconds=0)  # flushes the spans

    spans = [
        span
        for export in received.exports
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    [call] = [span for span in spans if span.name == CLASSIFY]
    steps = {span.name: span for span in spans if span.name.startswith("step ")}
    # A sprain is settled at C (resources), so D is skipped; E always reviews.
    assert set(steps) == {"step A", "step B", "step C", "step E"}
    assert {span.parent_span_id for span in steps.values()} == {call.span_id}
    assert all(MARKER.encode() not in export.SerializeToString() for export in received.exports)
