"""Request ids, the access log, Prometheus metrics and OTLP traces, without patient content."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from server import metrics
from server.app import TriageServer
from server.calls import Role
from server.config import ProviderSettings, Settings
from server.ids import is_id
from server.logs import JsonFormatter
from server.metrics import serve_metrics
from tests.conftest import issue_test_key
from tests.fake_llm import FakeLLM, Reply, answer
from tests.integration.test_model_backends import route
from tests.support import eventually, make_case
from triage.v1 import classify_service_pb2, classify_service_pb2_grpc
from triage.v1.admin_service_pb2 import STRATEGY_MOST_URGENT
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


def _grew(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


MODEL = "fake:triage-model"


@pytest.fixture
async def routed(settings: Settings, fake_llm: FakeLLM) -> AsyncIterator[AsyncTriageClient]:
    """An admin's client of a server whose decision point B asks the fake model (uncached)."""
    server = TriageServer(
        settings.model_copy(
            update={"openai_providers": {"fake": ProviderSettings(base_url=fake_llm.url)}, "cache_ttl_seconds": 0}
        )
    )
    await server.start()
    try:
        admin = await issue_test_key(server, Role.ADMIN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=admin) as client:
            await route(client, "high_risk", STRATEGY_MOST_URGENT)
            yield client
    finally:
        await server.stop(grace_seconds=0)


async def test_model_steps_are_counted_by_outcome_with_their_cost_tokens_and_time(
    routed: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    port = serve_metrics("127.0.0.1", 0)
    fake_llm.plan(
        "high_risk",
        answer(high_risk=False, reasons=[]),
        Reply(content="not the answer's format"),
        Reply(status=400),  # not transient: no retry
        Reply(content='{"high_risk": true, "reasons": []}', delay_seconds=3),
    )
    before = await asyncio.to_thread(_scrape, port)
    for timeout in (None, None, None, 1.0):
        timed_out = (await routed.classify(make_case("headache", "30y"), timeout=timeout)).cost
    after = await asyncio.to_thread(_scrape, port)

    step = {"step": "high_risk", "backend": MODEL}
    outcomes = ("ok", "invalid_answer", "error", "timeout", "circuit_open")
    assert {o: _grew(before, after, "triage_model_calls_total", **step, outcome=o) for o in outcomes} == {
        "ok": 1, "invalid_answer": 1, "error": 1, "timeout": 1, "circuit_open": 0,
    }  # fmt: skip
    assert _grew(before, after, "triage_model_call_duration_seconds_count", **step) == 4
    # The timed-out call took about its second, the others far less.
    assert 0.7 < _grew(before, after, "triage_model_call_duration_seconds_sum", **step) < 2.5
    # Two answers billed (the invalid one too) at 200 input and 30 output tokens, 1 and 4 USD per million,
    # and the call that timed out in flight at its worst case, as its caller was told.
    assert timed_out.usd_micros > 320
    input_tokens = _grew(before, after, "triage_model_tokens_total", **step, direction="input")
    assert input_tokens == 400 + timed_out.input_tokens
    output_tokens = _grew(before, after, "triage_model_tokens_total", **step, direction="output")
    assert output_tokens == 60 + timed_out.output_tokens
    cost = _grew(before, after, "triage_model_cost_usd_total", **step)
    assert cost == pytest.approx((2 * 320 + timed_out.usd_micros) * 1e-6)


async def test_audit_commits_are_measured(server: TriageServer, keys: dict[Role, str]) -> None:
    port = serve_metrics("127.0.0.1", 0)
    before = await asyncio.to_thread(_scrape, port)
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=keys[Role.CLINICIAN]) as client:
        await asyncio.gather(*(client.classify(make_case("ankle injury", f"{20 + i}y")) for i in range(6)))
    after = await asyncio.to_thread(_scrape, port)

    assert _grew(before, after, "triage_audit_batch_records_sum") == 6
    commits = _grew(before, after, "triage_audit_batch_records_count")
    assert 1 <= commits <= 6
    assert _grew(before, after, "triage_audit_commit_duration_seconds_count") == commits
    assert after[("triage_audit_pending_records", ())] == 0
    assert _grew(before, after, "triage_audit_commit_failures_total") == 0


async def test_every_response_names_the_server_version_as_does_the_build_info_gauge(
    server: TriageServer, keys: dict[Role, str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    async with aio.insecure_channel(target) as channel:
        # The health stubs' types omit HealthStub's methods; bind Check directly.
        check_method: aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse] = (
            channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
        )
        check = check_method(health_pb2.HealthCheckRequest())
        await check
        served = dict(await check.initial_metadata())
        refused = classify_service_pb2_grpc.ClassifyServiceStub(channel).Classify(
            classify_service_pb2.ClassifyRequest(case=CASE), metadata=[("authorization", "Bearer tri_wrong")]
        )
        with pytest.raises(aio.AioRpcError):
            await refused
        failed = dict(await refused.trailing_metadata())
    release = version("triage-server")
    assert served["x-server-version"] == failed["x-server-version"] == release
    scraped = await asyncio.to_thread(_scrape, serve_metrics("127.0.0.1", 0))
    [info] = [labels for (name, labels), value in scraped.items() if name == "triage_build_info" and value == 1]
    assert dict(info)["version"] == release


async def test_log_lines_carry_the_calls_trace_ids_and_probes_are_not_traced(
    settings: Settings, collector: tuple[Collector, int]
) -> None:
    received, port = collector
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("triage.access")
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    server = TriageServer(settings.model_copy(update={"otlp_endpoint": f"http://127.0.0.1:{port}"}))
    await server.start()
    try:
        key = await issue_test_key(server, Role.CLINICIAN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            await client.health()
            await client.classify(CASE)
    finally:
        await server.stop(grace_seconds=0)
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)

    spans = [span for e in received.exports for r in e.resource_spans for s in r.scope_spans for span in s.spans]
    assert not [span for span in spans if span.name.startswith("/grpc.")]
    [call] = [span for span in spans if span.name == CLASSIFY]
    logged = {entry["method"]: entry for entry in map(json.loads, lines.getvalue().splitlines())}
    assert logged[CLASSIFY]["trace_id"] == call.trace_id.hex()
    assert logged[CLASSIFY]["span_id"] == call.span_id.hex()
    # Logged, but outside any span.
    assert "trace_id" not in logged["/grpc.health.v1.Health/Check"]


def _budget(scope: str, key_id: str = "") -> tuple[float | None, float | None]:
    labels = {"scope": scope, "key_id": key_id}
    return (
        REGISTRY.get_sample_value("triage_budget_limit_usd", labels),
        REGISTRY.get_sample_value("triage_budget_remaining_usd", labels),
    )


def test_budgets_are_exported_globally_and_per_key_only_when_configured() -> None:
    metrics.set_budget("", limit_usd_micros=20_000_000, used_usd_micros=4_500_000)
    metrics.set_budget("01JKEYNOTEXPORTED", limit_usd_micros=5_000_000, used_usd_micros=1_000_000)
    assert _budget("global") == (20.0, 15.5)
    assert _budget("key", "01JKEYNOTEXPORTED") == (None, None)
    metrics.export_budget_per_key(True)
    try:
        metrics.set_budget("01JKEYEXPORTED", limit_usd_micros=5_000_000, used_usd_micros=1_000_000)
        metrics.set_budget("01JKEYNOLIMIT", limit_usd_micros=0, used_usd_micros=1_000_000)
    finally:
        metrics.export_budget_per_key(False)
    assert _budget("key", "01JKEYEXPORTED") == (5.0, 4.0)
    assert _budget("key", "01JKEYNOLIMIT") == (None, None)


async def test_a_model_calls_cost_shows_in_the_global_budget_remaining(
    routed: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    limit = (await routed.get_config()).config.global_monthly_budget_usd_micros / 1e6
    fake_llm.plan("high_risk", answer(high_risk=False, reasons=[]))
    await routed.classify(make_case("headache", "31y"))

    async def settled() -> bool:
        # 200 input and 30 output tokens at 1 and 4 USD per million.
        exported_limit, remaining = _budget("global")
        return exported_limit == limit and remaining == pytest.approx(limit - 320e-6)

    await eventually(settled, within_seconds=3)
