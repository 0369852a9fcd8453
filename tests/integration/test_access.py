"""Who may call what: API keys, roles, revocation and anonymous demo callers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.ids import new_id
from server.store.api_keys import ApiKeyStore
from server.store.database import open_database
from tests.conftest import issue_test_key
from tests.support import eventually, make_case
from triage.v1 import admin_service_pb2, classify_service_pb2, explain_service_pb2
from triage_client import AsyncTriageClient, InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated

CASE = make_case("chest pain", "67y")
ALL_ROLES = frozenset(Role)
ADMIN_ONLY = frozenset({Role.ADMIN})
OPEN = None


@dataclass(frozen=True)
class Rpc:
    method: str
    request: Any
    streaming: bool = False
    # The roles allowed; None: open to anyone, without credentials.
    roles: frozenset[Role] | None = ALL_ROLES

    def __str__(self) -> str:
        return self.method.rsplit("/", 1)[-1]


_ADMIN = "/triage.v1.AdminService/"
RPCS = [
    Rpc("/triage.v1.ClassifyService/Classify", classify_service_pb2.ClassifyRequest(case=CASE)),
    Rpc("/triage.v1.ExplainService/Explain", explain_service_pb2.ExplainRequest(case=CASE), streaming=True),
    Rpc(_ADMIN + "GetConfig", admin_service_pb2.GetConfigRequest(), roles=ADMIN_ONLY),
    Rpc(_ADMIN + "UpdateConfig", admin_service_pb2.UpdateConfigRequest(), roles=ADMIN_ONLY),
    Rpc(_ADMIN + "ListBackends", admin_service_pb2.ListBackendsRequest(), roles=ADMIN_ONLY),
    Rpc(
        _ADMIN + "CreateApiKey",
        admin_service_pb2.CreateApiKeyRequest(name="made-in-test", role=admin_service_pb2.ROLE_DEMO),
        roles=ADMIN_ONLY,
    ),
    Rpc(_ADMIN + "ListApiKeys", admin_service_pb2.ListApiKeysRequest(), roles=ADMIN_ONLY),
    Rpc(_ADMIN + "RevokeApiKey", admin_service_pb2.RevokeApiKeyRequest(key_id=new_id()), roles=ADMIN_ONLY),
    Rpc(_ADMIN + "GetUsage", admin_service_pb2.GetUsageRequest(), roles=ADMIN_ONLY),
    Rpc(_ADMIN + "ListAuditEvents", admin_service_pb2.ListAuditEventsRequest(), roles=ADMIN_ONLY),
    Rpc("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(), roles=OPEN),
]


async def call_status(target: str, rpc: Rpc, token: str | None) -> grpc.StatusCode:
    """Calls `rpc` with raw bytes (no client-side logic) and returns its status code."""
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    async with aio.insecure_channel(target) as channel:
        try:
            if rpc.streaming:
                stream: aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(rpc.method)
                async for _ in stream(rpc.request.SerializeToString(), metadata=metadata, timeout=10):
                    pass
            else:
                unary: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(rpc.method)
                await unary(rpc.request.SerializeToString(), metadata=metadata, timeout=10)
        except aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


DENIALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@pytest.mark.parametrize("rpc", RPCS, ids=str)
async def test_every_role_on_every_rpc(server: TriageServer, keys: dict[Role, str], rpc: Rpc) -> None:
    target = f"127.0.0.1:{server.port}"
    for role in Role:
        code = await call_status(target, rpc, keys[role])
        if rpc.roles is OPEN or role in rpc.roles:
            # Allowed: whatever the RPC answers (UNIMPLEMENTED, NOT_FOUND ...), it is not a denial.
            assert code not in DENIALS, (role, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, code)

    anonymous = await call_status(target, rpc, None)
    assert (anonymous not in DENIALS) if rpc.roles is OPEN else (anonymous == grpc.StatusCode.UNAUTHENTICATED)


async def test_reflection_is_open(server: TriageServer) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        method: aio.StreamStreamMultiCallable[
            reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
        ] = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = method(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        response = await call.read()

    assert isinstance(response, reflection_pb2.ServerReflectionResponse)
    assert "triage.v1.ClassifyService" in {s.name for s in response.list_services_response.service}


def _tampered(key: str) -> str:
    last = key[-1]
    return key[:-1] + ("A" if last != "A" else "B")


FAULTS: dict[str, Callable[[str], str]] = {
    "tampered secret": _tampered,
    "wrong prefix": lambda key: "trx_" + key[4:],
    "unknown key id": lambda key: key[:4] + new_id() + key[30:],
    "truncated": lambda key: key[:-5],
    "not a key at all": lambda _key: "hello",
    "empty": lambda _key: "",
}


@pytest.mark.parametrize("fault", FAULTS, ids=str)
async def test_bad_keys_are_unauthenticated_and_the_message_says_not_why(
    server: TriageServer, keys: dict[Role, str], fault: str
) -> None:
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=FAULTS[fault](keys[Role.ADMIN])) as client:
        with pytest.raises(Unauthenticated) as raised:
            await client.classify(CASE)

    assert raised.value.message == (
        "missing or invalid credentials: send `authorization: Bearer <API key or OIDC token>`"
    )


async def test_a_non_bearer_authorization_header_is_unauthenticated(
    server: TriageServer, keys: dict[Role, str]
) -> None:
    rpc = RPCS[0]
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        unary: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(rpc.method)
        with pytest.raises(aio.AioRpcError) as raised:
            await unary(rpc.request.SerializeToString(), metadata=(("authorization", f"Basic {keys[Role.ADMIN]}"),))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_expired_key_is_unauthenticated(server: TriageServer) -> None:
    key = await issue_test_key(server, Role.CLINICIAN, expires_in=timedelta(milliseconds=300))
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
        await client.classify(CASE)
        await asyncio.sleep(0.4)
        with pytest.raises(Unauthenticated):
            await client.classify(CASE)


async def test_keys_through_the_admin_service(client: AsyncTriageClient, server: TriageServer) -> None:
    request = admin_service_pb2.CreateApiKeyRequest(
        name="epic-prod", role=admin_service_pb2.ROLE_SERVICE, rate_limit="50/second"
    )
    request.expires_in.FromTimedelta(timedelta(days=90))
    created = await client.create_api_key(request)

    assert created.secret.startswith("tri_" + created.api_key.key_id + "_")
    assert created.api_key.role == admin_service_pb2.ROLE_SERVICE
    assert created.api_key.rate_limit == "50/second"
    span = created.api_key.expires_at.ToDatetime() - created.api_key.created_at.ToDatetime()
    assert span == timedelta(days=90)
    listed = [k async for k in client.iter_api_keys(page_size=2)]
    assert created.api_key.key_id in {k.key_id for k in listed}
    assert len(listed) == len(Role) + 1  # the fixture's keys, and this one
    # The database holds no secret, only its keyed hash.
    engine = open_database(server.settings.database_url)
    stored = ApiKeyStore(engine).get(created.api_key.key_id)
    engine.dispose()
    assert stored is not None
    assert created.secret not in stored.model_dump_json()

    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=created.secret) as service:
        assert (await service.classify(CASE)).esi_level
        revoked = await client.revoke_api_key(admin_service_pb2.RevokeApiKeyRequest(key_id=created.api_key.key_id))
        assert revoked.api_key.HasField("revoked_at")
        with pytest.raises(Unauthenticated):
            await service.classify(CASE)


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (admin_service_pb2.CreateApiKeyRequest(), {"name", "role"}),
        (
            admin_service_pb2.CreateApiKeyRequest(
                name="x", role=admin_service_pb2.ROLE_DEMO, rate_limit="lots", monthly_budget_usd_micros=-1
            ),
            {"rate_limit", "monthly_budget_usd_micros"},
        ),
    ],
)
async def test_bad_key_requests_name_their_fields(
    client: AsyncTriageClient, request_: admin_service_pb2.CreateApiKeyRequest, fields: set[str]
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await client.create_api_key(request_)
    assert {v.field for v in raised.value.field_violations} == fields


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Reload keys often, so that changes made by "another process" show quickly.
    return settings.model_copy(update={"api_key_reload_seconds": 0.2})


async def test_keys_changed_by_another_process_take_effect_within_the_reload_interval(
    server: TriageServer,
) -> None:
    # The bootstrap path (`triage-server keys`) writes the database, not this process's memory.
    key = await issue_test_key(server, Role.CLINICIAN)
    engine = open_database(server.settings.database_url)
    key_id = key[4:30]
    async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
        await client.classify(CASE)  # a key made elsewhere works at once
        ApiKeyStore(engine).revoke(key_id, now=datetime.now(UTC))
        engine.dispose()
        await eventually(lambda: _refused(client), within_seconds=1.0)


async def _refused(client: AsyncTriageClient) -> bool:
    try:
        await client.classify(CASE)
    except Unauthenticated:
        return True
    return False


@pytest.fixture
async def demo_server(settings: Settings) -> AsyncIterator[TriageServer]:
    server = TriageServer(settings.model_copy(update={"anonymous_demo": True, "rate_limit_demo": "3/day"}))
    await server.start()
    yield server
    await server.stop(grace_seconds=0)


async def test_anonymous_demo_callers_get_the_demo_role_and_its_limit(demo_server: TriageServer) -> None:
    async with AsyncTriageClient(f"127.0.0.1:{demo_server.port}", api_key="") as client:
        for _ in range(3):
            await client.classify(CASE)
        with pytest.raises(ResourceExhausted) as raised:
            await client.classify(CASE)
        with pytest.raises(PermissionDenied):
            await client.list_audit_events()

    assert raised.value.quota_violations[0].subject == "ip:127.0.0.1"
    assert raised.value.retry_delay is not None
    assert timedelta(hours=23) < raised.value.retry_delay <= timedelta(days=1)


async def test_in_demo_mode_a_bad_key_is_still_refused(demo_server: TriageServer) -> None:
    async with AsyncTriageClient(f"127.0.0.1:{demo_server.port}", api_key="tri_nonsense") as client:
        with pytest.raises(Unauthenticated):
            await client.classify(CASE)
