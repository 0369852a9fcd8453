"""The runtime configuration: read, change with a field mask and a version, history, hot reload."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from google.protobuf import field_mask_pb2
from sqlmodel import Session, select

from interceptors.rate_limit import RateLimitInterceptor
from server.app import TriageServer
from server.calls import CallState, Principal, Role, begin_call
from server.config import Settings
from server.end_users import EndUsers
from server.errors import ResourceExhausted as ServerResourceExhausted
from server.rate_limits import RateLimiter
from server.runtime_config import default_config
from server.store.database import open_database
from server.store.models import ConfigVersionRecord
from tests.support import eventually, make_case
from triage.v1 import admin_service_pb2
from triage.v1.admin_service_pb2 import Config, RoleRateLimit, StepPolicy, UpdateConfigRequest
from triage_client import Aborted, AsyncTriageClient, InvalidArgument, ResourceExhausted

# A danger-zone case: ESI 2 when D up-triages, ESI 3 when it only flags.
TACHYCARDIC = make_case("abdominal pain", "40y", vitals={"heart_rate_bpm": 130})


def update(expected_version: int, paths: list[str], **config: object) -> UpdateConfigRequest:
    return UpdateConfigRequest(
        config=Config(**config),  # type: ignore[arg-type]
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        expected_version=expected_version,
    )


async def test_the_defaults_come_from_the_settings(client: AsyncTriageClient) -> None:
    config = (await client.get_config()).config

    assert config.version == 0
    # B and C: the learned estimates under the rules; D from the settings (the tests' is up_triage).
    for step in (config.high_risk, config.resources):
        assert (step.backend, step.strategy) == ("learned", admin_service_pb2.STRATEGY_MODEL)
    assert config.narrative.backend == "rules"
    assert config.danger_zone_policy == admin_service_pb2.DANGER_ZONE_POLICY_UP_TRIAGE
    assert config.global_monthly_budget_usd_micros == 20_000_000
    prices = {p.backend: p for p in config.prices}
    assert prices["openai:gpt-4o-mini"].input_usd_micros_per_million_tokens == 150_000
    assert prices["openai:gpt-4o-mini"].output_usd_micros_per_million_tokens == 600_000
    limits = {admin_service_pb2.Role.Name(r.role): r.rate_limit for r in config.default_rate_limits}
    assert limits["ROLE_DEMO"] == "20/day"


async def test_a_change_is_versioned_applied_and_recorded(
    client: AsyncTriageClient, server: TriageServer, settings: Settings
) -> None:
    assert (await client.classify(TACHYCARDIC)).esi_level == 2
    request = update(
        0,
        ["danger_zone_policy", "high_risk"],
        danger_zone_policy=admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY,
        high_risk=StepPolicy(backend="openai:gpt-4o-mini", strategy=admin_service_pb2.STRATEGY_MOST_URGENT),
    )
    changed = (await client.update_config(request)).config

    assert changed.version == 1
    assert changed.danger_zone_policy == admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY
    assert changed.high_risk.strategy == admin_service_pb2.STRATEGY_MOST_URGENT
    assert changed.resources.backend == "learned"  # not in the mask: unchanged
    assert changed.updated_by  # the admin key's id
    assert (await client.classify(TACHYCARDIC)).esi_level == 3

    engine = open_database(settings.database_url)
    with Session(engine) as session:
        [record] = session.exec(select(ConfigVersionRecord)).all()
    engine.dispose()
    assert (record.version, record.updated_by) == (1, changed.updated_by)
    assert record.changed_paths.split() == ["danger_zone_policy", "high_risk"]


async def test_a_stale_version_is_aborted(client: AsyncTriageClient) -> None:
    budget = ["global_monthly_budget_usd_micros"]
    await client.update_config(update(0, budget, global_monthly_budget_usd_micros=5_000_000))

    with pytest.raises(Aborted, match="changed since version 0"):
        await client.update_config(update(0, budget, global_monthly_budget_usd_micros=1))
    assert (await client.get_config()).config.global_monthly_budget_usd_micros == 5_000_000


async def test_concurrent_changes_from_one_version_let_exactly_one_win(client: AsyncTriageClient) -> None:
    budget = ["global_monthly_budget_usd_micros"]
    outcomes = await asyncio.gather(
        *(client.update_config(update(0, budget, global_monthly_budget_usd_micros=n)) for n in range(1, 6)),
        return_exceptions=True,
    )

    assert sum(1 for o in outcomes if isinstance(o, Aborted)) == 4
    assert (await client.get_config()).config.version == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (update(0, []), "update_mask"),
        (update(0, ["version"], version=7), "update_mask"),
        (update(0, ["no_such_field"]), "update_mask"),
        (update(0, ["high_risk.backend"], high_risk=StepPolicy(backend="openai:no-price")), "config.high_risk.backend"),
        (update(0, ["resources.backend"], resources=StepPolicy(backend="not a backend")), "config.resources.backend"),
        (update(0, ["narrative.backend"], narrative=StepPolicy(backend="learned")), "config.narrative"),
        (
            update(0, ["high_risk"], high_risk=StepPolicy(backend="rules", strategy=admin_service_pb2.STRATEGY_MODEL)),
            "config.high_risk.strategy",
        ),
        (
            update(
                0,
                ["default_rate_limits"],
                default_rate_limits=[admin_service_pb2.RoleRateLimit(role=admin_service_pb2.ROLE_DEMO, rate_limit="x")],
            ),
            "config.default_rate_limits[0].rate_limit",
        ),
        (
            update(
                0,
                ["default_rate_limits"],
                default_rate_limits=[
                    RoleRateLimit(role=admin_service_pb2.ROLE_DEMO, rate_limit="5/minute"),
                    RoleRateLimit(role=admin_service_pb2.ROLE_DEMO, rate_limit="6/minute"),
                ],
            ),
            "config.default_rate_limits[1].role",
        ),
        (
            update(
                0,
                ["default_rate_limits"],
                default_rate_limits=[RoleRateLimit(role=admin_service_pb2.Role.ValueType(0), rate_limit="5/minute")],
            ),
            "config.default_rate_limits[0].role",
        ),
        (
            update(
                0,
                ["default_rate_limits"],
                default_rate_limits=[RoleRateLimit(role=admin_service_pb2.Role.ValueType(9), rate_limit="5/minute")],
            ),
            "config.default_rate_limits[0].role",
        ),
        (
            update(
                0,
                ["default_rate_limits"],
                default_rate_limits=[RoleRateLimit(role=admin_service_pb2.ROLE_ADMIN, rate_limit="0/minute")],
            ),
            "config.default_rate_limits.admin",
        ),
        (
            # A window of more than a year would make a RetryInfo no Duration can hold.
            update(
                0,
                ["default_rate_limits"],
                default_rate_limits=[RoleRateLimit(role=admin_service_pb2.ROLE_DEMO, rate_limit="1/99999 year")],
            ),
            "config.default_rate_limits[0].rate_limit",
        ),
        (
            update(
                0,
                ["prices"],
                prices=[admin_service_pb2.BackendPrice(backend="local:llama", input_usd_micros_per_million_tokens=-1)],
            ),
            "config.prices.local:llama.input_usd_micros_per_million_tokens",
        ),
        (
            update(
                0,
                ["prices"],
                prices=[
                    admin_service_pb2.BackendPrice(backend="local:llama", output_usd_micros_per_million_tokens=2**62)
                ],
            ),
            "config.prices.local:llama.output_usd_micros_per_million_tokens",
        ),
        (
            update(
                0,
                ["prices"],
                prices=[admin_service_pb2.BackendPrice(backend="local:llama")] * 2,
            ),
            "config.prices[1].backend",
        ),
        (
            update(0, ["resources.strategy"], resources=StepPolicy(strategy=admin_service_pb2.Strategy.ValueType(7))),
            "config.resources.strategy",
        ),
        (update(0, ["danger_zone_policy"], danger_zone_policy=-3), "config.danger_zone_policy"),
    ],
    ids=[
        "empty-mask",
        "read-only",
        "unknown-path",
        "no-price",
        "bad-name",
        "learned-narrative",
        "model-needs-backend",
        "bad-limit",
        "role-twice",
        "role-unspecified",
        "role-unknown",
        "admin-locked-out",
        "window-too-long",
        "price",
        "price-too-high",
        "priced-twice",
        "unknown-strategy",
        "unknown-danger-zone-policy",
    ],
)
async def test_bad_changes_name_their_fields(
    client: AsyncTriageClient, request_: UpdateConfigRequest, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await client.update_config(request_)

    assert field in {v.field for v in raised.value.field_violations}
    assert (await client.get_config()).config.version == 0


async def test_a_change_quoting_long_text_is_refused_with_its_fields_not_a_trailer_too_large(
    client: AsyncTriageClient,
) -> None:
    """Field paths quote backend names: 12 prices named by 4,000 characters each must still read as violations."""
    prices = [
        admin_service_pb2.BackendPrice(backend=f"{n}{'a' * 4_000}", input_usd_micros_per_million_tokens=-1)
        for n in range(12)
    ]
    request = UpdateConfigRequest(config=Config(prices=prices), update_mask=field_mask_pb2.FieldMask(paths=["prices"]))

    with pytest.raises(InvalidArgument) as raised:
        await client.update_config(request)

    violations = raised.value.field_violations
    assert 0 < len(violations) <= 10
    assert all(len(v.field) <= 120 and len(v.description) <= 120 for v in violations)


async def test_rate_limit_defaults_change_at_run_time(client: AsyncTriageClient, server: TriageServer) -> None:
    limits = [admin_service_pb2.RoleRateLimit(role=admin_service_pb2.ROLE_ADMIN, rate_limit="1/minute")]
    await client.update_config(update(0, ["default_rate_limits"], default_rate_limits=limits))

    await client.classify(TACHYCARDIC)
    with pytest.raises(ResourceExhausted):
        await client.classify(TACHYCARDIC)


async def test_every_process_applies_a_change_within_a_second(
    client: AsyncTriageClient, server: TriageServer, settings: Settings, keys: dict[Role, str]
) -> None:
    other = TriageServer(settings)  # the same database: another process would see the same
    await other.start()
    try:
        async with AsyncTriageClient(f"127.0.0.1:{other.port}", api_key=keys[Role.CLINICIAN]) as elsewhere:
            assert (await elsewhere.classify(TACHYCARDIC)).esi_level == 2
            policy = admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY
            await client.update_config(update(0, ["danger_zone_policy"], danger_zone_policy=policy))

            async def applied() -> bool:
                return (await elsewhere.classify(TACHYCARDIC)).esi_level == 3

            await eventually(applied, within_seconds=1.0)
    finally:
        await other.stop(grace_seconds=0)


def limits_of(config: Config) -> dict[str, str]:
    return {admin_service_pb2.Role.Name(r.role): r.rate_limit for r in config.default_rate_limits}


async def answers_every_role(server: TriageServer, keys: dict[Role, str]) -> None:
    """Each role's key, none with a limit of its own, is answered (the role defaults are in force)."""
    for role, key in keys.items():
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            caller = client.with_caller(end_user_address="203.0.113.7")  # a gateway's end user; others ignore it
            assert (await caller.classify(TACHYCARDIC)).esi_level == 2, role


async def test_a_roles_limit_is_changed_alone_and_the_others_keep_theirs(
    client: AsyncTriageClient, server: TriageServer, settings: Settings, keys: dict[Role, str]
) -> None:
    """The reported lock-out: one role's limit, sent alone, used to drop the others' (INTERNAL for every key)."""
    before = limits_of((await client.get_config()).config)
    demo = [RoleRateLimit(role=admin_service_pb2.ROLE_DEMO, rate_limit="5/minute")]
    changed = (await client.update_config(update(0, ["default_rate_limits"], default_rate_limits=demo))).config

    assert limits_of(changed) == before | {"ROLE_DEMO": "5/minute"}
    await answers_every_role(server, keys)
    restarted = TriageServer(settings)
    await restarted.start()
    try:
        await answers_every_role(restarted, keys)
    finally:
        await restarted.stop(grace_seconds=0)


def store_version(settings: Settings, version: int, config_json: str) -> None:
    """A row in the history as an older server, or a hand edit, would have left it."""
    engine = open_database(settings.database_url)
    with Session(engine) as session:
        session.add(
            ConfigVersionRecord(
                version=version, config_json=config_json, updated_at=datetime.now(UTC), updated_by="hand"
            )
        )
        session.commit()
    engine.dispose()


@pytest.mark.parametrize(
    "stored",
    [
        '{"version": 2, "default_rate_limits": {"demo": "5/minute"}}',  # what the lock-out left behind
        '{"version": 2, "high_risk": {"backend": "gone:model", "strategy": "model"}}',
        '{"version": 2, "danger_zone_policy": "sometimes"}',
        "{not json",
    ],
    ids=["missing-roles", "unknown-provider", "unknown-policy", "not-json"],
)
async def test_a_stored_version_that_does_not_hold_is_logged_and_skipped(
    client: AsyncTriageClient,
    server: TriageServer,
    settings: Settings,
    keys: dict[Role, str],
    caplog: pytest.LogCaptureFixture,
    stored: str,
) -> None:
    budget = ["global_monthly_budget_usd_micros"]
    await client.update_config(update(0, budget, global_monthly_budget_usd_micros=5_000_000))
    store_version(settings, 2, stored)
    caplog.set_level(logging.WARNING, logger="triage.config")

    restarted = TriageServer(settings)
    await restarted.start()
    try:
        # Logged once by each server that reads it (the running one may have polled first).
        skipped = [r.fields for r in caplog.records if "does not hold" in r.message]  # type: ignore[attr-defined]
        assert skipped
        assert all(fields["version"] == 2 and fields["problems"] for fields in skipped)
        await answers_every_role(restarted, keys)
        async with AsyncTriageClient(f"127.0.0.1:{restarted.port}", api_key=keys[Role.ADMIN]) as admin:
            in_force = (await admin.get_config()).config
            assert (in_force.version, in_force.global_monthly_budget_usd_micros) == (1, 5_000_000)
            # A change based on what GetConfig shows is not stale: version 2 was never in force.
            changed = await admin.update_config(update(1, budget, global_monthly_budget_usd_micros=7))
            assert changed.config.version == 3
    finally:
        await restarted.stop(grace_seconds=0)
    # The running server skips it too, when it polls.
    await eventually(lambda: _version_is(client, 3), within_seconds=2.0)


async def test_a_version_stored_before_the_gateway_role_holds_with_the_settings_limit_for_it(
    client: AsyncTriageClient, settings: Settings
) -> None:
    """Versions an older release stored name no gateway limit; they are not skipped as incomplete."""
    limits = settings.role_rate_limits()
    del limits[Role.GATEWAY]
    older = default_config(danger_zone_policy="flag_only", rate_limits=limits, global_monthly_budget_usd_micros=1)
    store_version(settings, 1, older.model_dump_json())

    await eventually(lambda: _version_is(client, 1), within_seconds=2.0)
    config = (await client.get_config()).config
    assert config.danger_zone_policy == admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY
    assert limits_of(config)["ROLE_GATEWAY"] == "20/day"


async def _version_is(client: AsyncTriageClient, version: int) -> bool:
    return (await client.get_config()).config.version == version


async def test_a_role_missing_from_the_defaults_is_counted_against_the_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defence in depth: were a role's default ever missing (a defect), its calls are counted, never failed."""
    limiter = RateLimiter(None)
    interceptor = RateLimitInterceptor(limiter, dict, EndUsers(b"test-secret"), fallback={Role.CLINICIAN: "1/minute"})
    begin_call(CallState(method="test", request_id="r", peer="p", principal=Principal("key:a", Role.CLINICIAN)))

    async def answer(request: str, context: object) -> str:
        return "answered"

    try:
        assert await interceptor.intercept(answer, "", None, "test") == "answered"  # type: ignore[arg-type]
        with pytest.raises(ServerResourceExhausted):
            await interceptor.intercept(answer, "", None, "test")  # type: ignore[arg-type]
    finally:
        await limiter.close()
    assert [r.fields["role"] for r in caplog.records if "no default rate limit" in r.message] == ["clinician"]  # type: ignore[attr-defined]
