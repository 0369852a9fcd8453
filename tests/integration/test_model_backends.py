"""Model backends at decision points B and C, against a real HTTP server speaking the chat API."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TypeAlias

import pytest
from google.protobuf import field_mask_pb2
from prometheus_client import REGISTRY

from server.app import TriageServer
from server.config import ProviderSettings, Settings
from tests.circuits import circuit_lines
from tests.conftest import KeysFor
from tests.fake_llm import FakeLLM, Reply, answer
from tests.support import eventually, make_case
from triage.v1 import admin_service_pb2, classification_pb2
from triage.v1.admin_service_pb2 import BackendPrice, Config, StepPolicy, UpdateConfigRequest
from triage_client import AsyncTriageClient, InvalidArgument

Strategy: TypeAlias = admin_service_pb2.Strategy.ValueType
MODEL = "fake:triage-model"
# 1 USD per million input tokens, 4 per million output tokens.
PRICE = BackendPrice(
    backend=MODEL, input_usd_micros_per_million_tokens=1_000_000, output_usd_micros_per_million_tokens=4_000_000
)
HEADACHE = make_case("headache", "30y")  # the rules: not high risk, one resource or none
CHEST_PAIN = make_case("chest pain", "67y")  # the rules: high risk, ESI 2
ABDOMINAL_PAIN = make_case("abdominal pain", "40y")  # the rules: labs and imaging, ESI 3


@pytest.fixture
def settings(settings: Settings, fake_llm: FakeLLM) -> Settings:
    return settings.model_copy(
        update={
            "openai_providers": {"fake": ProviderSettings(base_url=fake_llm.url)},
            "circuit_failure_threshold": 2,
            "circuit_open_seconds": 60.0,
            "cache_ttl_seconds": 0,  # every call runs the model: these tests count model calls
        }
    )


async def route(client: AsyncTriageClient, step: str, strategy: Strategy) -> None:
    """Prices the fake model and routes `step` to it with `strategy`."""
    current = (await client.get_config()).config
    config = Config()
    config.prices.extend([*(p for p in current.prices if p.backend != PRICE.backend), PRICE])
    getattr(config, step).CopyFrom(StepPolicy(backend=MODEL, strategy=strategy))
    await client.update_config(
        UpdateConfigRequest(
            config=config,
            update_mask=field_mask_pb2.FieldMask(paths=["prices", step]),
            expected_version=current.version,
        )
    )


def backend_of(classification: classification_pb2.Classification, step: int) -> str:
    return next(s.backend for s in classification.pipeline.step_backends if s.step == step)


async def test_the_model_can_raise_the_level_and_its_tokens_are_paid_for(
    client: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.plan("high_risk", answer(high_risk=True, reasons=["thunderclap onset"]))

    classification = await client.classify(HEADACHE)

    assert classification.esi_level == classification_pb2.ESI_LEVEL_2
    assert classification.decided_at == classification_pb2.STEP_HIGH_RISK
    assert any(f.code == "model.high_risk" and "thunderclap" in f.text for f in classification.findings)
    assert backend_of(classification, classification_pb2.STEP_HIGH_RISK) == MODEL
    # 200 input and 30 output tokens at 1 and 4 USD per million: 200 + 120 micro-dollars.
    assert (classification.cost.input_tokens, classification.cost.output_tokens) == (200, 30)
    assert classification.cost.usd_micros == 320
    [request] = fake_llm.asked("high_risk")
    assert request["model"] == "triage-model"
    assert request["response_format"]["json_schema"]["strict"] is True
    assert "headache" in request["messages"][1]["content"]


@pytest.mark.parametrize("strategy", [admin_service_pb2.STRATEGY_MODEL, admin_service_pb2.STRATEGY_MOST_URGENT])
async def test_the_model_never_undoes_a_hard_rule(
    client: AsyncTriageClient, fake_llm: FakeLLM, strategy: Strategy
) -> None:
    await route(client, "high_risk", strategy)
    fake_llm.plan("high_risk", answer(high_risk=False, reasons=[]))

    classification = await client.classify(CHEST_PAIN)

    assert classification.esi_level == classification_pb2.ESI_LEVEL_2
    assert len(fake_llm.asked("high_risk")) == 1


@pytest.mark.parametrize(
    ("strategy", "level"),
    [(admin_service_pb2.STRATEGY_MODEL, classification_pb2.ESI_LEVEL_4), (admin_service_pb2.STRATEGY_MOST_URGENT, 3)],
    ids=["model-count-stands", "larger-count-stands"],
)
async def test_resources_follow_the_strategy(
    client: AsyncTriageClient, fake_llm: FakeLLM, strategy: Strategy, level: int
) -> None:
    await route(client, "resources", strategy)
    fake_llm.plan("resources", answer(resources=[{"kind": "labs", "reason": "lipase"}]))

    classification = await client.classify(ABDOMINAL_PAIN)

    assert classification.esi_level == level


async def test_the_rules_are_not_asked_to_wait_when_the_strategy_is_rules(
    client: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_RULES)

    classification = await client.classify(HEADACHE)

    assert fake_llm.requests == []
    assert classification.cost.usd_micros == 0


async def test_a_slow_model_falls_back_to_the_rules_inside_the_deadline(
    client: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.plan("high_risk", Reply(content='{"high_risk": true, "reasons": []}', delay_seconds=3))

    started = time.monotonic()
    classification = await client.classify(HEADACHE, timeout=1.0)

    assert time.monotonic() - started < 1.0
    assert classification.esi_level != classification_pb2.ESI_LEVEL_2
    [fallback] = [f for f in classification.findings if f.code == "model.fallback"]
    assert "timeout" in fallback.text


async def test_transient_failures_are_retried_while_time_remains(client: AsyncTriageClient, fake_llm: FakeLLM) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.plan("high_risk", Reply(status=500), Reply(status=429), answer(high_risk=True, reasons=["sudden"]))

    classification = await client.classify(HEADACHE)

    assert classification.esi_level == classification_pb2.ESI_LEVEL_2
    assert len(fake_llm.asked("high_risk")) == 3


async def test_a_failing_backend_opens_its_circuit(client: AsyncTriageClient, fake_llm: FakeLLM) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.defaults["high_risk"] = Reply(status=400)  # not transient: no retries

    for _ in range(2):
        classification = await client.classify(HEADACHE)
        assert any(f.code == "model.fallback" and "BadRequestError" in f.text for f in classification.findings)
    asked = len(fake_llm.asked("high_risk"))
    classification = await client.classify(HEADACHE)

    assert len(fake_llm.asked("high_risk")) == asked  # not called while open
    assert any("circuit open" in f.text for f in classification.findings)
    backends = {b.name: b for b in (await client.list_backends()).backends}
    assert backends[MODEL].circuit_state == admin_service_pb2.CIRCUIT_STATE_OPEN
    assert backends["rules"].circuit_state == admin_service_pb2.CIRCUIT_STATE_CLOSED


async def test_a_backend_outage_is_logged_and_counted_when_its_circuit_opens_and_closes(
    settings: Settings, fake_llm: FakeLLM, keys_for: KeysFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    opened_before = REGISTRY.get_sample_value("triage_dependency_circuit_opened_total", {"dependency": MODEL}) or 0
    server = TriageServer(settings.model_copy(update={"circuit_open_seconds": 0.5}))
    await server.start()
    try:
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=await keys_for(server)) as client:
            await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
            # Unplanned, the model answers HTTP 500: an outage.
            for _ in range(5):
                classification = await client.classify(HEADACHE)
                assert any(f.code == "model.fallback" for f in classification.findings)
            assert REGISTRY.get_sample_value("triage_dependency_circuit_open", {"dependency": MODEL}) == 1

            fake_llm.defaults["high_risk"] = answer(high_risk=True, reasons=["sudden"])
            await asyncio.sleep(0.6)  # the window; then a trial call
            recovered = await client.classify(HEADACHE)
    finally:
        await server.stop(grace_seconds=0)

    assert recovered.esi_level == classification_pb2.ESI_LEVEL_2
    lines = circuit_lines(caplog)
    assert [(event, fields["dependency"]) for event, fields in lines] == [
        ("circuit opened", MODEL),
        ("circuit closed", MODEL),
    ]
    opened = lines[0][1]
    assert (opened["failures"], opened["open_seconds"], opened["error_type"]) == (2, 0.5, "InternalServerError")
    assert "headache" not in json.dumps(lines)
    opened_after = REGISTRY.get_sample_value("triage_dependency_circuit_opened_total", {"dependency": MODEL})
    assert opened_after == opened_before + 1
    assert REGISTRY.get_sample_value("triage_dependency_circuit_open", {"dependency": MODEL}) == 0


@pytest.mark.parametrize("content", ["not json at all", '{"high_risk": "perhaps"}', '{"reasons": []}'])
async def test_an_invalid_answer_is_discarded_but_paid_for(
    client: AsyncTriageClient, fake_llm: FakeLLM, content: str
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.plan("high_risk", Reply(content=content))

    classification = await client.classify(HEADACHE)

    assert "model_invalid_answer" in {w.code for w in classification.warnings}
    assert classification.esi_level != classification_pb2.ESI_LEVEL_2
    assert classification.cost.usd_micros == 320


async def test_backends_are_listed_with_prices(client: AsyncTriageClient) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)

    backends = {b.name: b for b in (await client.list_backends()).backends}

    assert backends[MODEL].price.output_usd_micros_per_million_tokens == 4_000_000
    assert backends["openai:gpt-4o-mini"].price.input_usd_micros_per_million_tokens == 150_000
    assert backends["rules"].price.input_usd_micros_per_million_tokens == 0


async def test_a_backend_of_an_unknown_provider_is_refused(client: AsyncTriageClient) -> None:
    current = (await client.get_config()).config
    config = Config(high_risk=StepPolicy(backend="nowhere:model"))
    with pytest.raises(InvalidArgument, match="high_risk"):
        await client.update_config(
            UpdateConfigRequest(
                config=config,
                update_mask=field_mask_pb2.FieldMask(paths=["high_risk.backend"]),
                expected_version=current.version,
            )
        )


async def test_explain_streams_the_model_narrative_before_the_classification(
    client: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    await route(client, "narrative", admin_service_pb2.STRATEGY_MODEL)
    fake_llm.plan(
        "narrative", Reply(chunks=("Chest pain at 67 ", "is high risk: ", "see a physician now."), output_tokens=12)
    )

    events = [event async for event in client.explain(CHEST_PAIN)]

    kinds = [str(e.WhichOneof("event")) for e in events]
    assert kinds[-1] == "classification"
    assert kinds[-4:-1] == ["narrative"] * 3
    assert set(kinds[:-4]) == {"step"}
    assert "".join(e.narrative.text for e in events[-4:-1]) == "Chest pain at 67 is high risk: see a physician now."
    classification = events[-1].classification
    assert classification.esi_level == classification_pb2.ESI_LEVEL_2  # the narrative never changes the level
    assert classification.cost.usd_micros == 200 + 48
    [request] = fake_llm.asked("narrative")
    assert "ESI 2" in request["messages"][1]["content"]


async def test_an_explain_whose_caller_goes_away_is_logged_as_cancelled(
    client: AsyncTriageClient, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triage.access")
    await route(client, "narrative", admin_service_pb2.STRATEGY_MODEL)
    fake_llm.plan("narrative", Reply(chunks=("one ", "two ", "three"), chunk_delay_seconds=0.5))

    async for _ in client.explain(CHEST_PAIN):
        break  # the caller reads the first step and goes away

    def explain_codes() -> list[object]:
        lines = [r.fields for r in caplog.records if r.name == "triage.access"]  # type: ignore[attr-defined]
        return [line["code"] for line in lines if line["method"].endswith("/Explain")]

    async def logged() -> bool:
        return bool(explain_codes())

    await eventually(logged, within_seconds=10)
    assert explain_codes() == ["CANCELLED"]


async def test_without_a_narrative_backend_explain_has_no_narrative(client: AsyncTriageClient) -> None:
    kinds = {str(e.WhichOneof("event")) async for e in client.explain(CHEST_PAIN)}

    assert "narrative" not in kinds


async def test_a_narrative_that_breaks_off_leaves_a_warning(client: AsyncTriageClient, fake_llm: FakeLLM) -> None:
    await route(client, "narrative", admin_service_pb2.STRATEGY_MODEL)
    fake_llm.plan("narrative", Reply(status=500), Reply(status=500), Reply(status=500))

    events = [event async for event in client.explain(CHEST_PAIN)]

    assert "narrative_unavailable" in {w.code for w in events[-1].classification.warnings}
