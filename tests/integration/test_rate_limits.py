"""Rate limits: exact under concurrency, reported on every answer, shared through Redis."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import grpc
import pytest
import redis.asyncio
from grpc import aio
from grpc_health.v1 import health_pb2

from server.app import RATE_LIMIT_STORAGE_HEALTH, TriageServer
from server.calls import Role
from server.config import Settings
from server.rate_limits import REDIS_FAILURES_TO_OPEN
from tests.circuits import dependencies
from tests.conftest import issue_test_key
from tests.redis_faults import connections_received, hung
from tests.redis_server import RedisServer
from tests.support import eventually, make_case
from triage.v1 import classify_service_pb2, classify_service_pb2_grpc, explain_service_pb2, explain_service_pb2_grpc
from triage_client import AsyncTriageClient, ResourceExhausted

CASE = make_case("ankle injury", "30y")


async def _burst(target: str, key: str, calls: int, at_once: int | None = None) -> tuple[int, list[ResourceExhausted]]:
    """`calls` Classify calls, `at_once` of them in flight (all, by default); the successes and the refusals."""
    in_flight = asyncio.Semaphore(at_once or calls)

    async def classify(client: AsyncTriageClient) -> object:
        async with in_flight:
            return await client.classify(CASE)

    async with AsyncTriageClient(target, api_key=key) as client:
        outcomes = await asyncio.gather(*(classify(client) for _ in range(calls)), return_exceptions=True)
    refusals = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    successes = sum(1 for o in outcomes if not isinstance(o, BaseException))
    assert successes + len(refusals) == calls, [o for o in outcomes if isinstance(o, BaseException)][:3]
    return successes, refusals


async def test_exactly_the_limit_succeeds_under_concurrency(server: TriageServer) -> None:
    key = await issue_test_key(server, Role.SERVICE, rate_limit="20/minute")

    successes, refusals = await _burst(f"127.0.0.1:{server.port}", key, 100)

    assert successes == 20
    assert len(refusals) == 80
    refusal = refusals[0]
    assert refusal.quota_violations[0].subject == f"key:{key[4:30]}"
    assert "20 per 1 minute" in refusal.quota_violations[0].description
    assert refusal.retry_delay is not None
    assert timedelta(0) < refusal.retry_delay <= timedelta(minutes=1)


async def test_every_answer_carries_the_rate_limit_headers(server: TriageServer) -> None:
    key = await issue_test_key(server, Role.CLINICIAN, rate_limit="3/minute;1000/day")
    credentials = (("authorization", f"Bearer {key}"),)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        classify = classify_service_pb2_grpc.ClassifyServiceStub(channel).Classify
        first = classify(classify_service_pb2.ClassifyRequest(case=CASE), metadata=credentials)
        await first
        explain = explain_service_pb2_grpc.ExplainServiceStub(channel).Explain
        stream = explain(explain_service_pb2.ExplainRequest(case=CASE), metadata=credentials)
        events = [event async for event in stream]
        await classify(classify_service_pb2.ClassifyRequest(case=CASE), metadata=credentials)
        refused = classify(classify_service_pb2.ClassifyRequest(case=CASE), metadata=credentials)
        with pytest.raises(aio.AioRpcError) as raised:
            await refused

    headers = dict(await first.initial_metadata())
    # The tightest of the key's limits is the one reported.
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("3", "2")
    assert 0 < int(headers["x-ratelimit-reset"]) <= 60
    assert headers["x-request-id"]
    assert events
    assert dict(await stream.initial_metadata())["x-ratelimit-remaining"] == "1"
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(raised.value.trailing_metadata() or ())
    assert (trailers["x-ratelimit-limit"], trailers["x-ratelimit-remaining"]) == ("3", "0")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"rate_limit_clinician": "2/minute"})


async def test_a_key_without_its_own_limit_gets_its_roles_default(server: TriageServer) -> None:
    key = await issue_test_key(server, Role.CLINICIAN)

    successes, refusals = await _burst(f"127.0.0.1:{server.port}", key, 5)

    assert (successes, len(refusals)) == (2, 3)


async def test_two_servers_sharing_redis_share_one_exact_count(
    redis_backed: TriageServer, settings: Settings, redis_server: RedisServer
) -> None:
    other = TriageServer(settings.model_copy(update={"redis_url": redis_server.url}))
    await other.start()
    try:
        key = await issue_test_key(redis_backed, Role.SERVICE, rate_limit="20/minute")
        # Interleaved, but not so many at once that this one event loop (both servers and the callers) answers
        # Redis later than its timeout: a count Redis did not answer in time is counted locally, by design.
        results = await asyncio.gather(
            _burst(f"127.0.0.1:{redis_backed.port}", key, 50, at_once=8),
            _burst(f"127.0.0.1:{other.port}", key, 50, at_once=8),
        )
    finally:
        await other.stop(grace_seconds=0)

    assert sum(successes for successes, _ in results) == 20


async def _storage_health(server: TriageServer) -> int:
    async with AsyncTriageClient(f"127.0.0.1:{server.port}") as client:
        return await client.health(RATE_LIMIT_STORAGE_HEALTH)


async def test_losing_redis_falls_back_to_local_counts_and_says_so(
    redis_backed: TriageServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triage.circuit")
    key = await issue_test_key(redis_backed, Role.SERVICE, rate_limit="100/minute")
    serving = health_pb2.HealthCheckResponse.SERVING
    async with AsyncTriageClient(f"127.0.0.1:{redis_backed.port}", api_key=key) as client:
        await client.classify(CASE)
        assert await _storage_health(redis_backed) == serving

        await redis_server.stop()
        for _ in range(REDIS_FAILURES_TO_OPEN):
            await client.classify(CASE)  # still answered, counted in this process
        assert await _storage_health(redis_backed) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await client.health() == serving  # the service as a whole still serves
        assert dependencies(caplog, "circuit opened") == ["redis_rate_limit"]

        await redis_server.start()

        async def recovered() -> bool:
            return await _storage_health(redis_backed) == serving

        await eventually(recovered, within_seconds=10)
        await client.classify(CASE)
    assert dependencies(caplog, "circuit closed") == ["redis_rate_limit"]


async def test_a_hung_redis_costs_one_attempt_and_limits_are_still_kept_in_this_process(
    redis_backed: TriageServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    key = await issue_test_key(redis_backed, Role.SERVICE, rate_limit="20/minute")
    async with AsyncTriageClient(f"127.0.0.1:{redis_backed.port}", api_key=key) as client:
        before = await connections_received(redis_server)
        async with hung(redis_server):
            outcomes: list[object] = []
            for _ in range(50):
                try:
                    outcomes.append(await client.classify(CASE))
                except ResourceExhausted as refusal:
                    outcomes.append(refusal)
            assert await _storage_health(redis_backed) == health_pb2.HealthCheckResponse.NOT_SERVING
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        # The first calls' attempts until the circuit opens and the probes (one per window), each on
        # a new connection; not one per call.
        assert await connections_received(redis_server) - before < REDIS_FAILURES_TO_OPEN + 4

        async def recovered() -> bool:
            return await _storage_health(redis_backed) == health_pb2.HealthCheckResponse.SERVING

        await eventually(recovered, within_seconds=10)
        keys_before = await _redis_keys(redis_server)
        await client.classify(CASE)
        assert await _redis_keys(redis_server) > keys_before  # counted in Redis again

    assert sum(1 for o in outcomes if isinstance(o, ResourceExhausted)) == 30
    assert dependencies(caplog, "circuit opened") == ["redis_rate_limit"]
    assert len(warnings) == 1
    assert dependencies(caplog, "circuit closed") == ["redis_rate_limit"]


async def _redis_keys(redis_server: RedisServer) -> int:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()
