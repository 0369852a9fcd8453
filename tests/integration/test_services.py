"""The services through the real typed client against a real server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from sqlalchemy import create_engine, text

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.ids import is_id
from tests.support import make_case
from triage.v1 import admin_service_pb2, case_pb2, classification_pb2, explain_service_pb2, explain_service_pb2_grpc
from triage_client import (
    AsyncTriageClient,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TriageClient,
    Unavailable,
    from_rpc_error,
)

STEMI = make_case(
    "CP radiating to L arm, diaphoretic",
    "67y",
    sex="male",
    history="hx MI s/p stent",
    vitals={"heart_rate_bpm": 110, "spo2_percent": 97, "respiratory_rate_per_min": 18},
    case_ref="enc-0001",
)


def _rows(settings: Settings) -> list[dict[str, object]]:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(text("SELECT * FROM audit_events"))]
    finally:
        engine.dispose()


async def test_classify_returns_an_audited_classification(client: AsyncTriageClient, settings: Settings) -> None:
    classification = await client.classify(STEMI)

    assert classification.esi_level == classification_pb2.ESI_LEVEL_2
    assert classification.decided_at == classification_pb2.STEP_HIGH_RISK
    assert "high_risk.possible_acs" in {f.code for f in classification.findings}
    assert all(f.input_field for f in classification.findings)
    assert is_id(classification.classification_id)
    assert classification.case_ref == "enc-0001"
    assert classification.pipeline.ruleset_version.startswith("esi4-rules-")
    backends = {b.step: b.backend for b in classification.pipeline.step_backends}
    # B is the rules' answer, with the learned estimate beside it (the default configuration).
    assert backends[classification_pb2.STEP_HIGH_RISK] == "rules+learned"
    assert backends[classification_pb2.STEP_LIFE_SAVING] == backends[classification_pb2.STEP_REVIEW] == "rules"
    assert classification.rationale.startswith("ESI 2")
    # The record was durable before the response: read it with a fresh connection.
    rows = _rows(settings)
    assert [r["classification_id"] for r in rows] == [classification.classification_id]
    assert rows[0]["esi_level"] == 2
    assert rows[0]["method"] == "/triage.v1.ClassifyService/Classify"
    assert len(str(rows[0]["input_hmac_sha256"])) == 64


async def test_audit_holds_no_patient_content(client: AsyncTriageClient, settings: Settings) -> None:
    marker = "zebra-marker-7f3a"
    case = make_case(f"chest pain {marker}", "71y", history=f"note {marker}", vitals={"heart_rate_bpm": 123.4})

    await client.classify(case)

    dump = repr(_rows(settings))
    assert marker not in dump
    assert "chest pain" not in dump
    assert "123.4" not in dump


async def test_same_case_same_answer(client: AsyncTriageClient) -> None:
    first, second = await asyncio.gather(client.classify(STEMI), client.classify(STEMI))

    assert first.classification_id != second.classification_id
    for field in ("esi_level", "confidence", "findings", "predicted_resources", "warnings", "rationale"):
        assert getattr(first, field) == getattr(second, field)


async def test_explain_streams_each_step_then_the_classification(client: AsyncTriageClient) -> None:
    case = make_case("abd pain", "35y", sex="male", vitals={"heart_rate_bpm": 112, "spo2_percent": 98})

    events = [event async for event in client.explain(case)]

    steps = [e.step for e in events[:-1]]
    assert [s.step for s in steps] == [
        classification_pb2.STEP_LIFE_SAVING,
        classification_pb2.STEP_HIGH_RISK,
        classification_pb2.STEP_RESOURCES,
        classification_pb2.STEP_DANGER_ZONE_VITALS,
        classification_pb2.STEP_REVIEW,
    ]
    assert all(s.question and s.answer for s in steps)
    assert [s.backend for s in steps] == ["rules", "rules+learned", "rules+learned", "rules", "rules"]
    assert [s.decisive for s in steps] == [False, False, False, True, True]
    assert steps[3].esi_level == classification_pb2.ESI_LEVEL_2
    assert "danger_zone.heart_rate" in {f.code for f in steps[3].evidence}
    final = events[-1]
    assert final.WhichOneof("event") == "classification"
    assert final.classification.esi_level == classification_pb2.ESI_LEVEL_2
    assert final.classification.resource_count >= 2


async def test_explain_stops_early_at_life_saving(client: AsyncTriageClient) -> None:
    case = make_case("SOB", "70y", vitals={"spo2_percent": 84})

    events = [event async for event in client.explain(case)]

    assert [e.step.step for e in events[:-1]] == [classification_pb2.STEP_LIFE_SAVING, classification_pb2.STEP_REVIEW]
    assert events[-1].classification.esi_level == classification_pb2.ESI_LEVEL_1


async def test_explain_and_classify_agree(client: AsyncTriageClient) -> None:
    explained = [event async for event in client.explain(STEMI)][-1].classification
    classified = await client.classify(STEMI)

    assert explained.esi_level == classified.esi_level
    assert explained.findings == classified.findings


async def test_bad_input_names_every_field(client: AsyncTriageClient) -> None:
    case = make_case("", "67y", vitals={"heart_rate_bpm": 400, "spo2_percent": float("nan")})

    with pytest.raises(InvalidArgument) as raised:
        await client.classify(case)

    assert {(v.field, v.reason) for v in raised.value.field_violations} == {
        ("case.chief_complaint", "REQUIRED"),
        ("case.vitals.heart_rate_bpm", "OUT_OF_RANGE"),
        ("case.vitals.spo2_percent", "NOT_FINITE"),
    }


async def test_an_empty_case_is_invalid(client: AsyncTriageClient) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await client.classify(case_pb2.TriageCase())

    assert {"case.age", "case.chief_complaint"} <= {v.field for v in raised.value.field_violations}


async def test_explain_without_a_subject_is_invalid(server: TriageServer, keys: dict[Role, str]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = explain_service_pb2_grpc.ExplainServiceStub(channel)
        credentials = (("authorization", f"Bearer {keys[Role.CLINICIAN]}"),)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.Explain(explain_service_pb2.ExplainRequest(), metadata=credentials):
                pass

    error = from_rpc_error(raised.value)
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.field_violations] == ["case"]


@pytest.mark.parametrize(
    ("payload", "streaming"),
    [(b"\xff\xff\xff\xff", False), (b"\x0a\x04\x22\x02\xc3\x28", False), (b"\xff\xff", True)],
    ids=["corrupt", "bad-utf8", "corrupt-stream"],
)
async def test_unparsable_bytes_are_invalid_argument(server: TriageServer, payload: bytes, streaming: bool) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        if streaming:
            stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                "/triage.v1.ExplainService/Explain"
            )
            call = stream(payload)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in call:
                    pass
        else:
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/triage.v1.ClassifyService/Classify"
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await unary(payload)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_explain_by_id_needs_case_storage(client: AsyncTriageClient) -> None:
    classification = await client.classify(STEMI)

    with pytest.raises(FailedPrecondition, match="stored cases"):
        async for _ in client.explain(classification_id=classification.classification_id):
            pass
    with pytest.raises(InvalidArgument):
        async for _ in client.explain(classification_id="not-an-id"):
            pass


async def test_audit_events_page_through_in_order(client: AsyncTriageClient) -> None:
    ids = [(await client.classify(STEMI)).classification_id for _ in range(7)]

    pages = []
    token = ""
    while True:
        page = await client.list_audit_events(admin_service_pb2.ListAuditEventsRequest(page_size=3, page_token=token))
        pages.append([e.classification_id for e in page.audit_events])
        token = page.next_page_token
        if not token:
            break

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == sorted(ids)
    everything = [e async for e in client.iter_audit_events()]
    assert [e.classification_id for e in everything] == sorted(ids)
    assert everything[0].finding_codes
    assert everything[0].esi_level == classification_pb2.ESI_LEVEL_2


async def test_audit_events_by_time_range(client: AsyncTriageClient) -> None:
    await client.classify(STEMI)
    now = datetime.now(UTC)

    past = [e async for e in client.iter_audit_events(end_time=now - timedelta(hours=1))]
    recent = [e async for e in client.iter_audit_events(start_time=now - timedelta(minutes=5))]

    assert past == []
    assert len(recent) == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (admin_service_pb2.ListAuditEventsRequest(page_size=-1), "page_size"),
        (admin_service_pb2.ListAuditEventsRequest(page_size=5000), "page_size"),
        (admin_service_pb2.ListAuditEventsRequest(page_token="garbage"), "page_token"),
    ],
    ids=["negative", "too-large", "bad-token"],
)
async def test_audit_paging_errors(
    client: AsyncTriageClient, request_: admin_service_pb2.ListAuditEventsRequest, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await client.list_audit_events(request_)
    assert field in {v.field for v in raised.value.field_violations}


async def test_a_page_token_is_bound_to_its_time_range(client: AsyncTriageClient) -> None:
    for _ in range(3):
        await client.classify(STEMI)
    first = await client.list_audit_events(admin_service_pb2.ListAuditEventsRequest(page_size=1))

    other_range = admin_service_pb2.ListAuditEventsRequest(page_size=1, page_token=first.next_page_token)
    other_range.start_time.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))

    with pytest.raises(InvalidArgument):
        await client.list_audit_events(other_range)


@pytest.mark.parametrize(
    "service", ["", "triage.v1.ClassifyService", "triage.v1.ExplainService", "triage.v1.AdminService"]
)
async def test_health_per_service(client: AsyncTriageClient, service: str) -> None:
    assert await client.health(service) == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service(client: AsyncTriageClient) -> None:
    with pytest.raises(NotFound):
        await client.health("triage.v1.NoSuchService")


async def test_reflection_lists_the_services(server: TriageServer) -> None:
    def services() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    names = await asyncio.to_thread(services)

    assert {
        "triage.v1.ClassifyService",
        "triage.v1.ExplainService",
        "triage.v1.AdminService",
        "grpc.health.v1.Health",
    } <= set(names)


async def test_the_blocking_client_works_too(server: TriageServer, keys: dict[Role, str]) -> None:
    def run() -> tuple[int, list[str]]:
        with TriageClient(f"127.0.0.1:{server.port}", api_key=keys[Role.CLINICIAN]) as client:
            level = int(client.classify(STEMI).esi_level)
            kinds = [str(e.WhichOneof("event")) for e in client.explain(STEMI)]
            return level, kinds

    level, kinds = await asyncio.to_thread(run)

    assert level == classification_pb2.ESI_LEVEL_2
    assert kinds[-1] == "classification"
    assert set(kinds[:-1]) == {"step"}


async def test_the_api_key_is_sent_as_a_bearer_token(server: TriageServer, keys: dict[Role, str]) -> None:
    seen: list[str] = []

    class Recorder(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
            seen.extend(v for k, v in details.metadata or () if k == "authorization")
            return await continuation(details, request)

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", interceptors=[Recorder()])
    async with AsyncTriageClient(api_key=keys[Role.CLINICIAN], channel=channel) as client:
        await client.classify(STEMI)

    assert seen == [f"Bearer {keys[Role.CLINICIAN]}"]


async def test_audit_store_failure_is_unavailable_not_acknowledged(
    client: AsyncTriageClient, settings: Settings
) -> None:
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE audit_events"))
    engine.dispose()

    with pytest.raises(Unavailable, match="not recorded"):
        await client.classify(STEMI)


async def test_reflection_resolves_method_symbols(server: TriageServer) -> None:
    """ghz and grpcurl ask for "Service.Method"; see server/reflection.py."""

    def lookup() -> str:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            return str(database.FindFileContainingSymbol("triage.v1.ClassifyService.Classify").name)

    assert await asyncio.to_thread(lookup) == "triage/v1/classify_service.proto"


async def test_the_learned_estimate_is_named_in_classify_and_in_explain(client: AsyncTriageClient) -> None:
    case = make_case("SOB", "81y", arrival="ambulance", vitals={"spo2_percent": 91, "heart_rate_bpm": 104})

    classification = await client.classify(case)
    events = [event async for event in client.explain(case)]

    assert classification.esi_level == classification_pb2.ESI_LEVEL_2
    [finding] = [f for f in classification.findings if f.code == "learned.high_risk"]
    assert finding.text.startswith("estimated risk of a critical outcome ")
    assert "arrived by ambulance" in finding.text
    assert finding.input_field == "arrival_mode"  # the strongest input, named like a field violation
    b = next(e.step for e in events if e.step.step == classification_pb2.STEP_HIGH_RISK)
    assert b.backend == "learned"
    assert [f.text for f in b.evidence if f.code == "learned.high_risk"] == [finding.text]
