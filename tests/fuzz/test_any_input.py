"""No caller input, on any RPC, as any caller, gets INTERNAL or UNKNOWN.

Messages are generated from the contract's descriptors (tests/fuzz/strategies.py),
half of them a valid request with a few fields replaced so that calls get past
validation; then the same as raw wire bytes, cut and flipped. Each test sends
its share of the suite's calls (over 10,000 in all) to the one server process,
and the server's log must show no unexpected error afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import CALLERS, ROLES, Fuzzing
from tests.fuzz.harness import ALLOWED, METHODS, Outcome
from tests.fuzz.strategies import Generator, Hints, field_paths, mutated
from tests.support import make_case
from triage.v1 import admin_service_pb2, classify_service_pb2, explain_service_pb2

BATCH = 8
# Calls per RPC from generated messages (8,200), and from mutated bytes over all RPCs (2,400).
QUOTA = {"Classify": 2_000, "Explain": 1_200, "UpdateConfig": 800}
ADMIN_QUOTA = 600
MUTATED_QUOTA = 2_400
MASK_PATHS = field_paths(admin_service_pb2.Config.DESCRIPTOR)
ADMIN = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]
# Shrinking a batch against a live server takes minutes; a failure names each bad call and its bytes instead.
NO_SHRINKING = (Phase.explicit, Phase.reuse, Phase.generate)


def _seeds() -> dict[str, list[Message]]:
    """Valid requests of each RPC, which the fuzzer changes a few fields of."""
    chest = make_case(
        "chest pain", "67y", vitals={"heart_rate_bpm": 110, "spo2_percent": 91}, risks=("anticoagulated",)
    )
    infant = make_case("fever", "20d", vitals={"temperature_c": 38.5})
    return {
        "Classify": [classify_service_pb2.ClassifyRequest(case=case) for case in (chest, infant)],
        "Explain": [explain_service_pb2.ExplainRequest(case=chest), explain_service_pb2.ExplainRequest(case=infant)],
        "CreateApiKey": [
            admin_service_pb2.CreateApiKeyRequest(
                name="integration",
                role=admin_service_pb2.ROLE_SERVICE,
                rate_limit="5/minute",
                expires_in=duration_pb2.Duration(seconds=3600),
            )
        ],
        "UpdateConfig": [
            admin_service_pb2.UpdateConfigRequest(
                config=admin_service_pb2.Config(
                    high_risk=admin_service_pb2.StepPolicy(
                        backend="fake:model", strategy=admin_service_pb2.STRATEGY_MODEL
                    ),
                    prices=[
                        admin_service_pb2.BackendPrice(backend="fake:model", input_usd_micros_per_million_tokens=1)
                    ],
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["high_risk", "prices"]),
            ),
            admin_service_pb2.UpdateConfigRequest(
                config=admin_service_pb2.Config(
                    default_rate_limits=[
                        admin_service_pb2.RoleRateLimit(role=admin_service_pb2.ROLE_DEMO, rate_limit="5/minute")
                    ]
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["default_rate_limits"]),
            ),
        ],
    }


SEEDS = _seeds()


_GENERATORS: dict[int, Generator] = {}


def request_strategy(method: MethodDescriptor, hints: Hints) -> st.SearchStrategy[Message]:
    """Any request of the method's type, or one of its valid requests with a field or two replaced."""
    generator = _GENERATORS.setdefault(id(hints), Generator(hints, MASK_PATHS))
    anything = generator.message(method.input_type)
    seeds = SEEDS.get(method.name)
    if not seeds:
        return anything
    paths = field_paths(method.input_type)

    @st.composite
    def tweaked(draw: st.DrawFn) -> Message:
        request = type(seeds[0])()
        request.CopyFrom(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 2))):
            _replace(request, draw(st.sampled_from(paths)), draw, generator)
        return request

    return st.one_of(anything, tweaked())


def _replace(request: Message, path: str, draw: st.DrawFn, generator: Generator) -> None:
    *parents, name = path.split(".")
    target = request
    for parent in parents:
        target = getattr(target, parent)
    target.ClearField(name)
    field = cast(FieldDescriptor, target.DESCRIPTOR.fields_by_name[name])
    generator.set(target, field, draw, depth=len(parents))


def callers_for(method: MethodDescriptor) -> st.SearchStrategy[str]:
    """Mostly callers who get past the door (admins for AdminService), so that requests reach the service."""
    if method.containing_service.full_name == ADMIN.full_name:
        return st.one_of(st.just("admin"), st.just("admin"), st.just("admin"), st.sampled_from(CALLERS))
    return st.one_of(st.sampled_from(ROLES), st.sampled_from(ROLES), st.sampled_from(ROLES), st.sampled_from(CALLERS))


def check(outcomes: list[Outcome], fuzzing: Fuzzing, log_offset: int) -> None:
    bad = [o for o in outcomes if o.code not in ALLOWED]
    assert not bad, "\n".join(
        f"{o.method} as {o.caller}: {o.code.name} {o.details!r} for {o.request.hex()}" for o in bad
    )
    faults = fuzzing.server.faults_since(log_offset)
    assert not faults, faults[:5]


def _quota(method: MethodDescriptor) -> int:
    return QUOTA.get(method.name, ADMIN_QUOTA)


def _fixups(fuzzing: Fuzzing) -> dict[str, Callable[[Message, bool], None]]:
    """UpdateConfig needs the current version, or every change is ABORTED before it is checked."""
    get_config = next(m for m in METHODS if m.name == "GetConfig")

    def current_version(request: Message, apply: bool) -> None:
        if apply:
            _, [response] = fuzzing.caller.call(get_config, b"", "admin")
            request.expected_version = admin_service_pb2.GetConfigResponse.FromString(response).config.version  # type: ignore[attr-defined]

    return {"UpdateConfig": current_version}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_generated_requests_get_an_allowed_status(fuzzing: Fuzzing, method: MethodDescriptor) -> None:
    calls_before, log_offset = fuzzing.caller.calls, fuzzing.server.log_size()
    fixup = _fixups(fuzzing).get(method.name)
    requests = st.tuples(request_strategy(method, fuzzing.hints), callers_for(method), st.booleans())

    @settings(
        max_examples=_quota(method) // BATCH,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        phases=NO_SHRINKING,
    )
    @given(batch=st.lists(requests, min_size=BATCH, max_size=BATCH))
    def run(batch: list[tuple[Message, str, bool]]) -> None:
        calls = []
        for request, caller, fix in batch:
            if fixup is not None:
                fixup(request, fix)
            calls.append((method, request.SerializeToString(), caller))
        outcomes = fuzzing.caller.batch(calls)
        check(outcomes, fuzzing, log_offset)

    run()
    assert fuzzing.caller.calls - calls_before >= _quota(method)


@pytest.mark.timeout(120)
def test_mutated_bytes_get_an_allowed_status(fuzzing: Fuzzing) -> None:
    calls_before, log_offset = fuzzing.caller.calls, fuzzing.server.log_size()

    @st.composite
    def raw_call(draw: st.DrawFn) -> tuple[MethodDescriptor, bytes, str]:
        method = draw(st.sampled_from(METHODS))
        serialized = request_strategy(method, fuzzing.hints).map(lambda m: m.SerializeToString())
        return method, draw(mutated(serialized)), draw(callers_for(method))

    @settings(
        max_examples=MUTATED_QUOTA // BATCH,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        phases=NO_SHRINKING,
    )
    @given(batch=st.lists(raw_call(), min_size=BATCH, max_size=BATCH))
    def run(batch: list[tuple[MethodDescriptor, bytes, str]]) -> None:
        check(fuzzing.caller.batch(batch), fuzzing, log_offset)

    run()
    assert fuzzing.caller.calls - calls_before >= MUTATED_QUOTA


def test_a_request_over_the_size_limit_is_refused_as_such(fuzzing: Fuzzing) -> None:
    classify = next(m for m in METHODS if m.name == "Classify")
    outcome, _ = fuzzing.caller.call(classify, b"\x0a" + b"\xff" * 70_000, "clinician")

    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def _request(method: str, message: Message) -> tuple[MethodDescriptor, bytes]:
    return next(m for m in METHODS if m.name == method), message.SerializeToString()


Timestamp = timestamp_pb2.Timestamp
Duration = duration_pb2.Duration
REPORTED = [
    (
        "ListAuditEvents",
        admin_service_pb2.ListAuditEventsRequest(start_time=Timestamp(seconds=253402300800)),
        "start_time.seconds",
    ),
    ("ListAuditEvents", admin_service_pb2.ListAuditEventsRequest(end_time=Timestamp(nanos=-1)), "end_time.nanos"),
    (
        "GetUsage",
        admin_service_pb2.GetUsageRequest(end_time=Timestamp(seconds=1, nanos=1_000_000_000)),
        "end_time.nanos",
    ),
    ("GetUsage", admin_service_pb2.GetUsageRequest(start_time=Timestamp(seconds=-(2**63))), "start_time.seconds"),
    ("GetUsage", admin_service_pb2.GetUsageRequest(key_id="not an id"), "key_id"),
    *(
        (
            "CreateApiKey",
            admin_service_pb2.CreateApiKeyRequest(name="k", role=admin_service_pb2.ROLE_DEMO, expires_in=duration),
            field,
        )
        for duration, field in (
            (Duration(seconds=10**12), "expires_in.seconds"),
            (Duration(seconds=2**62), "expires_in.seconds"),
            (Duration(seconds=1, nanos=-5), "expires_in.nanos"),
            (Duration(seconds=200 * 365 * 86_400), "expires_in"),
        )
    ),
    (
        "CreateApiKey",
        admin_service_pb2.CreateApiKeyRequest(name="k", role=admin_service_pb2.ROLE_DEMO, rate_limit="1/99999 year"),
        "rate_limit",
    ),
    # On PostgreSQL, whose text holds no NUL, these failed the write: INTERNAL, or UNAVAILABLE for a whole batch.
    ("CreateApiKey", admin_service_pb2.CreateApiKeyRequest(name="a\x00b", role=admin_service_pb2.ROLE_DEMO), "name"),
    (
        "Classify",
        classify_service_pb2.ClassifyRequest(case=make_case("chest pain", case_ref="a\x00b")),
        "case.case_ref",
    ),
]


@pytest.mark.parametrize(("method", "request_", "field"), REPORTED, ids=[f"{m}:{f}" for m, _, f in REPORTED])
def test_inputs_that_failed_before_are_refused_naming_their_field(
    fuzzing: Fuzzing, method: str, request_: Message, field: str
) -> None:
    """The fuzzer's finds on the service before this suite: each was INTERNAL (OverflowError, ValueError)."""
    outcome, _ = fuzzing.caller.call(*_request(method, request_), "admin")

    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert field in outcome.violations
