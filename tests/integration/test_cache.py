"""The response cache: same case and configuration, a new classification that costs nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest
from google.protobuf import field_mask_pb2
from prometheus_client import REGISTRY

from server.app import TriageServer
from server.config import ProviderSettings, Settings
from tests.circuits import dependencies
from tests.conftest import KeysFor
from tests.fake_llm import FakeLLM, Reply
from tests.integration.test_model_backends import HEADACHE, route
from tests.redis_faults import connections_received, down, hung
from tests.redis_server import RedisServer
from tests.support import eventually, make_case
from triage.v1 import admin_service_pb2
from triage.v1.admin_service_pb2 import Config, UpdateConfigRequest
from triage_client import AsyncTriageClient

CASE = make_case("ankle sprain", "30y", case_ref="first")
SAME_CASE = make_case("ankle sprain", "30y", case_ref="second")


def hits() -> float:
    return REGISTRY.get_sample_value("triage_cache_lookups_total", {"result": "hit"}) or 0.0


async def test_the_same_case_is_answered_from_the_cache_with_a_new_id(client: AsyncTriageClient) -> None:
    before = hits()
    first = await client.classify(CASE)
    second = await client.classify(SAME_CASE)

    assert hits() - before == 1
    assert second.classification_id != first.classification_id
    assert (first.case_ref, second.case_ref) == ("first", "second")
    assert second.esi_level == first.esi_level
    assert list(second.findings) == list(first.findings)
    events = [e async for e in client.iter_audit_events()]
    assert [(e.classification_id, e.cache_hit) for e in events] == [
        (first.classification_id, False),
        (second.classification_id, True),
    ]


async def test_a_configuration_change_or_a_different_case_misses(client: AsyncTriageClient) -> None:
    await client.classify(CASE)
    before = hits()
    await client.classify(make_case("ankle sprain", "31y"))
    current = (await client.get_config()).config
    await client.update_config(
        UpdateConfigRequest(
            config=Config(danger_zone_policy=admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY),
            update_mask=field_mask_pb2.FieldMask(paths=["danger_zone_policy"]),
            expected_version=current.version,
        )
    )
    await client.classify(CASE)

    assert hits() == before


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"cache_ttl_seconds": 0.5})


async def test_entries_expire(client: AsyncTriageClient) -> None:
    await client.classify(CASE)
    await asyncio.sleep(0.6)
    before = hits()
    await client.classify(SAME_CASE)

    assert hits() == before


@pytest.fixture
async def model_server(settings: Settings, fake_llm: FakeLLM) -> AsyncIterator[TriageServer]:
    fake_llm.defaults["high_risk"] = Reply(content='{"high_risk": false, "reasons": []}')
    server = TriageServer(
        settings.model_copy(
            update={"openai_providers": {"fake": ProviderSettings(base_url=fake_llm.url)}, "cache_ttl_seconds": 60}
        )
    )
    await server.start()
    yield server
    await server.stop(grace_seconds=0)


async def test_a_hit_makes_no_model_call_and_costs_nothing(
    model_server: TriageServer, keys_for: KeysFor, fake_llm: FakeLLM
) -> None:
    key = await keys_for(model_server)
    async with AsyncTriageClient(f"127.0.0.1:{model_server.port}", api_key=key) as client:
        await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
        first = await client.classify(HEADACHE)
        second = await client.classify(HEADACHE)

    assert first.cost.usd_micros > 0
    assert second.cost.usd_micros == 0
    assert len(fake_llm.asked("high_risk")) == 1


async def test_servers_sharing_redis_share_the_cache(
    settings: Settings, redis_server: RedisServer, keys_for: KeysFor
) -> None:
    shared = settings.model_copy(update={"redis_url": redis_server.url, "cache_ttl_seconds": 60})
    servers = [TriageServer(shared), TriageServer(shared)]
    for server in servers:
        await server.start()
    try:
        key = await keys_for(servers[0])
        before = hits()
        for server in servers:
            async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
                await client.classify(CASE)
        assert hits() - before == 1
    finally:
        for server in servers:
            await server.stop(grace_seconds=0)


@pytest.mark.parametrize("fault", [hung, down], ids=["hung", "down"])
async def test_a_failing_redis_is_skipped_after_one_attempt_and_used_again_when_it_answers(
    settings: Settings,
    redis_server: RedisServer,
    keys_for: KeysFor,
    caplog: pytest.LogCaptureFixture,
    fault: Callable[[RedisServer], AbstractAsyncContextManager[None]],
) -> None:
    caplog.set_level(logging.INFO)
    server = TriageServer(settings.model_copy(update={"redis_url": redis_server.url, "cache_ttl_seconds": 60}))
    await server.start()
    try:
        key = await keys_for(server)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            await client.classify(CASE)
            before = await connections_received(redis_server)
            async with fault(redis_server):
                # Each would wait out a timeout on the lookup and another on the store without the breaker.
                answered = [await client.classify(SAME_CASE) for _ in range(50)]
                warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            if fault is hung:
                # Redis accepts, on resuming, the connections made while it was stopped: one per attempt
                # after the first, as a client drops a connection that timed out. Here the cache's and the
                # rate limiter's first attempts, and their probes (one per window for each).
                assert await connections_received(redis_server) - before < 10

            async def cache_used_again() -> bool:
                hits_before = hits()
                await client.classify(SAME_CASE)
                return hits() > hits_before

            await eventually(cache_used_again, within_seconds=10)
    finally:
        await server.stop(grace_seconds=0)

    assert len(answered) == 50
    # The state changes are logged, not the calls: one line for each use of Redis.
    assert sorted(dependencies(caplog, "circuit opened")) == ["redis_cache", "redis_rate_limit"]
    assert len(warnings) == 2
    assert "redis_cache" in dependencies(caplog, "circuit closed")
    assert REGISTRY.get_sample_value("triage_dependency_circuit_open", {"dependency": "redis_cache"}) == 0
