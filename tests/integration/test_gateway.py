"""The gateway role: a web tier's key, trusted to forward its end users' addresses and limited per end user."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import redis.asyncio
from google.protobuf import field_mask_pb2
from grpc import aio
from prometheus_client import REGISTRY, generate_latest

from server.app import TriageServer
from server.calls import Role
from server.config import ProviderSettings, Settings
from tests.conftest import issue_test_key
from tests.fake_llm import FakeLLM, Reply
from tests.integration.test_model_backends import HEADACHE, MODEL, route
from tests.redis_server import RedisServer
from tests.support import make_case
from triage.v1 import admin_service_pb2, classify_service_pb2
from triage.v1.admin_service_pb2 import Config, RoleRateLimit, UpdateConfigRequest
from triage_client import (
    AsyncTriageClient,
    InvalidArgument,
    PermissionDenied,
    RateLimit,
    ResourceExhausted,
    TriageClient,
)

CASE = make_case("ankle injury", "30y")
ADDRESS = "203.0.113.7"
FIELD = "metadata.x-end-user-address"


@pytest.fixture
def settings(settings: Settings, fake_llm: FakeLLM) -> Settings:
    # The gateway role keeps its documented default (20/day); a model provider for the attribution test.
    fake_llm.defaults["high_risk"] = Reply(content='{"high_risk": false, "reasons": []}')
    return settings.model_copy(
        update={"openai_providers": {"fake": ProviderSettings(base_url=fake_llm.url)}, "cache_ttl_seconds": 0}
    )


@pytest.fixture
async def gateway(server: TriageServer, keys: dict[Role, str]) -> AsyncIterator[AsyncTriageClient]:
    """The web tier's client: the gateway key, no end user of its own."""
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=keys[Role.GATEWAY]) as client:
        yield client


async def use_up(caller: AsyncTriageClient, calls: int) -> list[RateLimit | None]:
    """Makes `calls` Classify calls; the rate limit each reported."""
    reported = []
    for _ in range(calls):
        await caller.classify(CASE)
        reported.append(caller.rate_limit)
    return reported


async def test_each_end_user_gets_twenty_calls_a_day_and_the_21st_is_told_when_it_resets(
    gateway: AsyncTriageClient,
) -> None:
    first = gateway.with_caller(end_user_address=ADDRESS)

    reported = await use_up(first, 20)
    with pytest.raises(ResourceExhausted) as refused:
        await first.classify(CASE)

    assert [r.remaining if r else None for r in reported] == list(range(19, -1, -1))
    assert {r.limit if r else None for r in reported} == {20}
    refusal = refused.value.rate_limit
    assert refusal is not None
    assert (refusal.limit, refusal.remaining) == (20, 0)
    assert timedelta(hours=23) < timedelta(seconds=refusal.reset_seconds) <= timedelta(days=1)
    assert refused.value.retry_delay == timedelta(seconds=refusal.reset_seconds)
    assert first.rate_limit == refusal  # the caller's latest report is the refusal's
    assert refused.value.quota_violations[0].subject.endswith("/end-user")
    # Another end user of the same gateway has twenty of their own.
    second = gateway.with_caller(end_user_address="203.0.113.8")
    await second.classify(CASE)
    assert second.rate_limit is not None
    assert (second.rate_limit.limit, second.rate_limit.remaining) == (20, 19)


async def test_the_same_end_user_through_another_gateway_is_counted_apart(
    gateway: AsyncTriageClient, server: TriageServer
) -> None:
    await use_up(gateway.with_caller(end_user_address=ADDRESS), 3)
    other_key = await issue_test_key(server, Role.GATEWAY)

    other = gateway.with_caller(bearer=other_key, end_user_address=ADDRESS)
    await other.classify(CASE)

    assert other.rate_limit is not None
    assert other.rate_limit.remaining == 19


async def test_an_ipv6_end_user_is_counted_by_their_64_and_an_ipv4_mapped_address_as_ipv4(
    gateway: AsyncTriageClient, server: TriageServer
) -> None:
    key = await issue_test_key(server, Role.GATEWAY, rate_limit="2/day")
    one, other = "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe"
    await gateway.with_caller(bearer=key, end_user_address=one).classify(CASE)
    await gateway.with_caller(bearer=key, end_user_address=other).classify(CASE)
    with pytest.raises(ResourceExhausted):
        await gateway.with_caller(bearer=key, end_user_address="2001:db8:1:2::99").classify(CASE)
    next_network = gateway.with_caller(bearer=key, end_user_address="2001:db8:1:3::1")
    await next_network.classify(CASE)
    assert next_network.rate_limit is not None
    assert next_network.rate_limit.remaining == 1

    await gateway.with_caller(bearer=key, end_user_address="::ffff:198.51.100.1").classify(CASE)
    await gateway.with_caller(bearer=key, end_user_address="198.51.100.1").classify(CASE)
    with pytest.raises(ResourceExhausted):
        await gateway.with_caller(bearer=key, end_user_address="198.51.100.1").classify(CASE)


async def test_a_forwarded_address_from_any_other_caller_is_ignored(server: TriageServer) -> None:
    key = await issue_test_key(server, Role.SERVICE, rate_limit="2/minute")
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as service:
        await service.with_caller(end_user_address=ADDRESS).classify(CASE)
        await service.with_caller(end_user_address="not an address").classify(CASE)  # not even read
        with pytest.raises(ResourceExhausted) as refused:
            await service.with_caller(end_user_address="203.0.113.9").classify(CASE)

    assert refused.value.quota_violations[0].subject == f"key:{key[4:30]}"  # the key's own count


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        (None, "REQUIRED"),
        ("203.0.113.300", "INVALID_ADDRESS"),
        ("203.0.113.7, 198.51.100.1", "INVALID_ADDRESS"),
        ("client.example.org", "INVALID_ADDRESS"),
        ("2001:db8::/64", "INVALID_ADDRESS"),
    ],
)
async def test_a_gateway_call_without_one_valid_address_names_the_metadata_field(
    gateway: AsyncTriageClient, address: str | None, reason: str
) -> None:
    caller = gateway if address is None else gateway.with_caller(end_user_address=address)
    with pytest.raises(InvalidArgument) as classify_refused:
        await caller.classify(CASE)
    with pytest.raises(InvalidArgument) as explain_refused:
        async for _ in caller.explain(CASE):
            pass

    for refused in (classify_refused.value, explain_refused.value):
        [violation] = refused.field_violations
        assert (violation.field, violation.reason) == (FIELD, reason)
        assert address is None or address not in str(refused.details)  # the value is not echoed


async def test_an_address_sent_twice_is_refused(server: TriageServer, keys: dict[Role, str]) -> None:
    metadata = (
        ("authorization", f"Bearer {keys[Role.GATEWAY]}"),
        ("x-end-user-address", ADDRESS),
        ("x-end-user-address", "198.51.100.1"),
    )
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        classify: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/triage.v1.ClassifyService/Classify")
        with pytest.raises(aio.AioRpcError) as refused:
            await classify(classify_service_pb2.ClassifyRequest(case=CASE).SerializeToString(), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert FIELD in (refused.value.details() or "")


async def test_a_gateway_may_not_use_the_admin_service(gateway: AsyncTriageClient) -> None:
    with pytest.raises(PermissionDenied):
        await gateway.with_caller(end_user_address=ADDRESS).get_config()


async def test_an_explain_stream_reports_its_rate_limit_before_the_first_step(
    gateway: AsyncTriageClient, server: TriageServer
) -> None:
    key = await issue_test_key(server, Role.GATEWAY, rate_limit="1/minute")
    caller = gateway.with_caller(bearer=key, end_user_address=ADDRESS)
    steps = caller.explain(CASE)
    await anext(steps)
    assert caller.rate_limit is not None
    assert (caller.rate_limit.limit, caller.rate_limit.remaining) == (1, 0)
    async for _ in steps:
        pass

    with pytest.raises(ResourceExhausted) as refused:
        async for _ in caller.explain(CASE):
            pass
    assert refused.value.rate_limit is not None
    assert 0 < refused.value.rate_limit.reset_seconds <= 60


async def test_a_caller_shares_the_channel_and_closing_it_leaves_the_channel_open(
    gateway: AsyncTriageClient, keys: dict[Role, str]
) -> None:
    """The web tier's admin pages: a signed-in admin's own credentials over the gateway's channel."""
    async with gateway.with_caller(bearer=keys[Role.ADMIN]) as admin:
        assert (await admin.get_config()).config.version == 0
        assert admin.rate_limit is not None  # the admin key's own limit
    await gateway.with_caller(end_user_address=ADDRESS).classify(CASE)  # the shared channel is still open
    with pytest.raises(PermissionDenied):
        await gateway.get_config()  # the gateway's own credentials are unchanged


async def test_the_blocking_client_has_the_same_caller_and_rate_limit(
    server: TriageServer, keys: dict[Role, str]
) -> None:
    def use() -> list[RateLimit | None]:
        with TriageClient(f"127.0.0.1:{server.port}", api_key=keys[Role.GATEWAY]) as gateway:
            caller = gateway.with_caller(end_user_address=ADDRESS)
            caller.classify(CASE)
            reported = [caller.rate_limit]
            for _ in caller.explain(CASE):
                reported.append(caller.rate_limit)
            caller.close()  # leaves the shared channel open
            with pytest.raises(InvalidArgument) as refused:
                gateway.classify(CASE)  # no end user
            return [*reported, refused.value.rate_limit]

    first, *steps, refusal = await asyncio.to_thread(use)

    assert first is not None
    assert first.remaining == 19
    assert steps
    assert {step.remaining if step else None for step in steps} == {18}
    assert refusal is None  # refused before it was counted


async def test_a_gateway_default_changed_by_update_config_takes_effect(
    client: AsyncTriageClient, gateway: AsyncTriageClient
) -> None:
    defaults = {r.role: r.rate_limit for r in (await client.get_config()).config.default_rate_limits}
    assert defaults[admin_service_pb2.ROLE_GATEWAY] == "20/day"
    changed = await client.update_config(
        UpdateConfigRequest(
            config=Config(
                default_rate_limits=[RoleRateLimit(role=admin_service_pb2.ROLE_GATEWAY, rate_limit="1/hour")]
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["default_rate_limits"]),
            expected_version=0,
        )
    )
    assert {r.role: r.rate_limit for r in changed.config.default_rate_limits}[admin_service_pb2.ROLE_GATEWAY] == (
        "1/hour"
    )

    caller = gateway.with_caller(end_user_address=ADDRESS)
    await caller.classify(CASE)
    with pytest.raises(ResourceExhausted) as refused:
        await caller.classify(CASE)
    assert refused.value.rate_limit is not None
    assert refused.value.rate_limit.limit == 1


ADDRESSES = ("198.51.100.73", "2001:db8:abcd:12::77", "2001:db8:abcd:12:0:0:0:77", "2001:db8:abcd:12:")


async def test_the_address_is_nowhere_but_usage_and_audit_name_the_gateway_key(
    client: AsyncTriageClient,
    gateway: AsyncTriageClient,
    server: TriageServer,
    keys: dict[Role, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await route(client, "high_risk", admin_service_pb2.STRATEGY_MOST_URGENT)
    key = await issue_test_key(server, Role.GATEWAY, rate_limit="2/day")
    for address in ADDRESSES[:2]:
        caller = gateway.with_caller(bearer=key, end_user_address=address)
        await caller.classify(HEADACHE)
        async for _ in caller.explain(HEADACHE):
            pass
        with pytest.raises(ResourceExhausted):
            await caller.classify(HEADACHE)
    with pytest.raises(InvalidArgument):
        await gateway.with_caller(bearer=key, end_user_address=ADDRESSES[0] + "0").classify(HEADACHE)

    key_id = key[4:30]
    audited = [e async for e in client.iter_audit_events()]
    assert [e.key_id for e in audited] == [key_id] * 4
    usage = (await client.get_usage(admin_service_pb2.GetUsageRequest(key_id=key_id))).usage
    assert [(row.backend, row.requests) for row in usage] == [(MODEL, 4)]
    await server.stop(grace_seconds=0)  # everything written (the fixture's stop is then a no-op)
    database = sqlite3.connect(server.settings.database_url.removeprefix("sqlite:///"))
    stored = "\n".join(database.iterdump())
    database.close()
    logged = caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)
    metrics = generate_latest(REGISTRY).decode()
    for address in ADDRESSES:
        assert address not in stored
        assert address not in logged
        assert address not in metrics
    assert key_id in stored


async def test_in_redis_an_end_user_is_only_a_keyed_hash(redis_backed: TriageServer, redis_server: RedisServer) -> None:
    key = await issue_test_key(redis_backed, Role.GATEWAY)
    async with AsyncTriageClient(f"127.0.0.1:{redis_backed.port}", api_key=key) as gateway:
        for address in ADDRESSES[:2]:
            await gateway.with_caller(end_user_address=address).classify(CASE)

    store = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        names = [name.decode() async for name in store.scan_iter()]
    finally:
        await store.aclose()
    counted = [name for name in names if "/end-user:" in name]
    assert len(counted) == 2, names  # one count per end user ...
    assert all(f"key:{key[4:30]}/end-user:" in name for name in counted)  # ... under the gateway's key
    assert not [name for name in names for address in ADDRESSES if address in name]
