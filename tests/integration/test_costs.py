"""Cost accounting and budgets: the ledger, the trailer, usage totals, reservations, alerts."""

from __future__ import annotations

import asyncio
import logging

import pytest
from google.protobuf import field_mask_pb2
from grpc import aio

from server.app import TriageServer
from server.calls import Role
from server.config import ProviderSettings, Settings
from server.store.database import open_database
from tests.conftest import issue_test_key
from tests.fake_llm import FakeLLM, Reply
from tests.integration.test_model_backends import HEADACHE, MODEL, route
from tests.support import eventually
from triage.v1 import admin_service_pb2, classification_pb2, classify_service_pb2, classify_service_pb2_grpc
from triage.v1.admin_service_pb2 import BackendPrice, Config, UpdateConfigRequest
from triage_client import AsyncTriageClient, ResourceExhausted

# What one answer of the fake costs: 100 input tokens at 1 USD and 10 output at 4 USD per million.
# A call's worst case, reserved before it, is about twice that (its prompt is longer than 100 tokens
# would be, and it may answer with up to 16).
HIGH_RISK = Reply(content='{"high_risk": false, "reasons": []}', input_tokens=100, output_tokens=10)
ANSWER_USD_MICROS = 140


@pytest.fixture
def settings(settings: Settings, fake_llm: FakeLLM) -> Settings:
    fake_llm.defaults["high_risk"] = HIGH_RISK
    # Few output tokens, so that the worst case of a call is a few hundred micro-dollars.
    return settings.model_copy(
        update={
            "openai_providers": {"fake": ProviderSettings(base_url=fake_llm.url)},
            "model_max_output_tokens": 16,
            "cache_ttl_seconds": 0,  # every call runs the model: these tests count model calls
        }
    )


async def set_budget(client: AsyncTriageClient, usd_micros: int) -> None:
    current = (await client.get_config()).config
    await client.update_config(
        UpdateConfigRequest(
            config=Config(global_monthly_budget_usd_micros=usd_micros),
            update_mask=field_mask_pb2.FieldMask(paths=["global_monthly_budget_usd_micros"]),
            expected_version=current.version,
        )
    )


async def classify_with_trailers(server: TriageServer, key: str) -> tuple[int, dict[str, str]]:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = classify_service_pb2_grpc.ClassifyServiceStub(channel).Classify(
            classify_service_pb2.ClassifyRequest(case=HEADACHE), metadata=(("authorization", f"Bearer {key}"),)
        )
        response = await call
        trailers = {key: str(value) for key, value in await call.trailing_metadata()}
        return response.classification.cost.usd_micros, trailers


async def test_every_call_reports_its_cost_in_a_trailer(
    client: AsyncTriageClient, server: TriageServer, keys: dict[Role, str]
) -> None:
    cost, trailers = await classify_with_trailers(server, keys[Role.CLINICIAN])
    assert (cost, trailers["x-cost-usd"]) == (0, "0.000000")

    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    cost, trailers = await classify_with_trailers(server, keys[Role.CLINICIAN])
    assert (cost, trailers["x-cost-usd"]) == (ANSWER_USD_MICROS, "0.000140")


async def test_usage_is_totalled_per_key_day_step_and_backend(
    client: AsyncTriageClient, server: TriageServer, keys: dict[Role, str]
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=keys[Role.SERVICE]) as service:
        for _ in range(3):
            await service.classify(HEADACHE)

    usage = await client.get_usage(admin_service_pb2.GetUsageRequest())

    [row] = usage.usage
    assert row.key_id == keys[Role.SERVICE][4:30]
    assert (row.step, row.backend, row.requests) == (classification_pb2.STEP_HIGH_RISK, MODEL, 3)
    assert (row.cost.input_tokens, row.cost.output_tokens, row.cost.usd_micros) == (300, 30, 3 * ANSWER_USD_MICROS)
    [global_budget] = [b for b in usage.budgets if b.key_id == ""]
    assert (global_budget.limit_usd_micros, global_budget.spent_usd_micros) == (20_000_000, 3 * ANSWER_USD_MICROS)
    events = [e async for e in client.iter_audit_events()]
    assert [e.cost.usd_micros for e in events] == [ANSWER_USD_MICROS] * 3
    only_admin = await client.get_usage(admin_service_pb2.GetUsageRequest(key_id=keys[Role.ADMIN][4:30]))
    assert list(only_admin.usage) == []


async def test_a_spent_budget_sends_model_steps_back_to_the_rules(client: AsyncTriageClient, fake_llm: FakeLLM) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    # Room for one call's worst case, not for a second after the first has cost 140.
    await set_budget(client, 350)

    first = await client.classify(HEADACHE)
    second = await client.classify(HEADACHE)

    assert first.cost.usd_micros == ANSWER_USD_MICROS
    assert len(fake_llm.asked("high_risk")) == 1
    [fallback] = [f for f in second.findings if f.code == "model.fallback"]
    assert "global budget is spent" in fallback.text
    assert second.cost.usd_micros == 0


async def test_a_budget_that_cannot_be_checked_sends_model_steps_back_to_the_rules(
    client: AsyncTriageClient, server: TriageServer, fake_llm: FakeLLM
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    engine = open_database(server.settings.database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE budget_holds")  # every reservation now fails
    engine.dispose()

    classification = await client.classify(HEADACHE)

    [fallback] = [f for f in classification.findings if f.code == "model.fallback"]
    assert "the budget could not be checked" in fallback.text
    assert (classification.cost.usd_micros, fake_llm.asked("high_risk")) == (0, [])


async def test_a_key_can_choose_to_be_refused_when_over_budget(client: AsyncTriageClient, server: TriageServer) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    key = await issue_test_key(server, Role.SERVICE, monthly_budget_usd_micros=350, refuse_over_budget=True)
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as limited:
        await limited.classify(HEADACHE)
        with pytest.raises(ResourceExhausted, match="key model budget") as raised:
            await limited.classify(HEADACHE)
    assert raised.value.quota_violations[0].subject == key[4:30]
    # Other keys are not held to this key's budget.
    assert (await client.classify(HEADACHE)).cost.usd_micros == ANSWER_USD_MICROS


async def test_free_backends_are_never_blocked_by_a_budget(client: AsyncTriageClient, fake_llm: FakeLLM) -> None:
    current = (await client.get_config()).config
    config = Config(prices=[*current.prices, BackendPrice(backend=MODEL)])
    config.high_risk.backend = MODEL
    config.high_risk.strategy = admin_service_pb2.STRATEGY_MOST_URGENT
    await client.update_config(
        UpdateConfigRequest(
            config=config,
            update_mask=field_mask_pb2.FieldMask(paths=["prices", "high_risk", "global_monthly_budget_usd_micros"]),
            expected_version=current.version,
        )
    )

    for _ in range(3):
        assert (await client.classify(HEADACHE)).cost.usd_micros == 0
    assert len(fake_llm.asked("high_risk")) == 3


async def test_budget_alerts_are_logged_once_per_threshold(
    client: AsyncTriageClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="triage.budgets")
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    await client.classify(HEADACHE)
    await client.classify(HEADACHE)  # 280 of 20 USD: no alert
    assert not [r for r in caplog.records if r.getMessage() == "budget alert"]
    await set_budget(client, 280)  # now 100 %, passing 50 and 80

    async def alerted() -> bool:
        return len([r for r in caplog.records if r.getMessage() == "budget alert"]) >= 3

    await eventually(alerted, within_seconds=3)
    alerts = [r.fields for r in caplog.records if r.getMessage() == "budget alert"]  # type: ignore[attr-defined]
    assert [a["percent"] for a in alerts] == [50, 80, 100]
    assert all(a["budget"] == "global" for a in alerts)


async def test_a_model_call_that_times_out_in_flight_is_charged_its_worst_case(
    client: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.plan("high_risk", Reply(content=HIGH_RISK.content, delay_seconds=3))

    classification = await client.classify(HEADACHE, timeout=1.0)

    # The provider may bill a request it received and did not answer in time: not tried again, and counted
    # as a cancelled call is, at its worst case, in the answer and in the usage totals alike.
    assert any(f.code == "model.fallback" and "timeout" in f.text for f in classification.findings)
    assert len(fake_llm.asked("high_risk")) == 1
    assert classification.cost.usd_micros > ANSWER_USD_MICROS
    [row] = (await client.get_usage(admin_service_pb2.GetUsageRequest())).usage
    assert row.cost.usd_micros == classification.cost.usd_micros


async def test_a_model_that_answers_only_errors_costs_nothing(client: AsyncTriageClient, fake_llm: FakeLLM) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.plan("high_risk", Reply(status=500), Reply(status=429), Reply(status=500))

    classification = await client.classify(HEADACHE)

    assert any(f.code == "model.fallback" for f in classification.findings)
    assert len(fake_llm.asked("high_risk")) == 3
    assert classification.cost.usd_micros == 0
    assert not (await client.get_usage(admin_service_pb2.GetUsageRequest())).usage


async def test_a_cancelled_call_is_still_accounted_for(
    client: AsyncTriageClient, server: TriageServer, fake_llm: FakeLLM, keys: dict[Role, str]
) -> None:
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    fake_llm.plan("high_risk", Reply(content=HIGH_RISK.content, delay_seconds=2))
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = classify_service_pb2_grpc.ClassifyServiceStub(channel).Classify(
            classify_service_pb2.ClassifyRequest(case=HEADACHE),
            metadata=(("authorization", f"Bearer {keys[Role.CLINICIAN]}"),),
        )

        async def model_asked() -> bool:
            return bool(fake_llm.asked("high_risk"))

        await eventually(model_asked, within_seconds=3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    async def accounted() -> bool:
        return bool((await client.get_usage(admin_service_pb2.GetUsageRequest())).usage)

    await eventually(accounted, within_seconds=3)
    [row] = (await client.get_usage(admin_service_pb2.GetUsageRequest())).usage
    # The provider bills a call it has started: the worst case is counted.
    assert row.requests == 1
    assert row.cost.usd_micros > ANSWER_USD_MICROS
    assert [e async for e in client.iter_audit_events()] == []


async def test_a_narrative_that_times_out_in_flight_is_charged_its_input(
    client: AsyncTriageClient, fake_llm: FakeLLM
) -> None:
    await route(client, "narrative", admin_service_pb2.STRATEGY_MODEL)
    fake_llm.plan("narrative", Reply(chunks=("The patient ",), delay_seconds=3))

    events = [event async for event in client.explain(HEADACHE, timeout=1.5)]

    classification = events[-1].classification
    assert "narrative_unavailable" in {w.code for w in classification.warnings}
    # The provider had the prompt: its tokens are counted, in the answer and the usage totals alike.
    assert classification.cost.input_tokens > 0
    assert classification.cost.output_tokens == 0
    [row] = (await client.get_usage(admin_service_pb2.GetUsageRequest())).usage
    assert (row.step, row.cost.usd_micros) == (classification_pb2.STEP_NARRATIVE, classification.cost.usd_micros)


async def test_an_explain_stream_cancelled_mid_narrative_is_charged_for_what_it_received(
    client: AsyncTriageClient, server: TriageServer, fake_llm: FakeLLM, keys: dict[Role, str]
) -> None:
    await route(client, "narrative", admin_service_pb2.STRATEGY_MODEL)
    fake_llm.plan("narrative", Reply(chunks=("The patient ",) * 20, chunk_delay_seconds=0.1))
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=keys[Role.CLINICIAN]) as clinician:
        stream = clinician.explain(HEADACHE)
        async for event in stream:
            if event.HasField("narrative"):
                break  # the caller has seen enough
        await stream.aclose()

    async def accounted() -> bool:
        return bool((await client.get_usage(admin_service_pb2.GetUsageRequest())).usage)

    await eventually(accounted, within_seconds=5)
    [row] = (await client.get_usage(admin_service_pb2.GetUsageRequest())).usage
    assert (row.step, row.backend, row.requests) == (classification_pb2.STEP_NARRATIVE, MODEL, 1)
    assert row.cost.output_tokens > 0  # what was streamed before the caller left
    assert [e async for e in client.iter_audit_events()] == []  # no classification was made
