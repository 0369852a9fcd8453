"""Any configuration an admin sends is either refused, naming its fields, or every call still works under it.

Generated configurations go through UpdateConfig; then Classify and Explain
are called as every role, with keys that have no limit of their own, so the
role defaults in force are the ones counted. A refused configuration leaves
the current one in place; an accepted one never breaks a call: each answers
OK, or RESOURCE_EXHAUSTED when a limit or budget the configuration set is spent.
"""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import Fuzzing
from tests.fuzz.harness import METHODS
from tests.fuzz.strategies import TEXT, integers
from tests.support import make_case
from triage.v1 import admin_service_pb2, classify_service_pb2, explain_service_pb2
from triage.v1.admin_service_pb2 import BackendPrice, Config, RoleRateLimit, StepPolicy, UpdateConfigRequest

EXAMPLES = 80
_BY_NAME = {m.name: m for m in METHODS}
CASE = make_case("abdominal pain", "40y", vitals={"heart_rate_bpm": 130})
BACKENDS = ["rules", "learned", "openai:gpt-4o-mini", "fake:model", "fake:other", "nosuch:model", "", "fake:"]
LIMITS = ["5/minute", "1000/second", "1 per 3 hours", "0/second", "1/99999 year", "x", "", "10/second;1000/hour"]
TOP_LEVEL = [f.name for f in Config.DESCRIPTOR.fields if f.name not in ("version", "updated_at", "updated_by")]

policies = st.builds(
    StepPolicy,
    backend=st.one_of(st.sampled_from(BACKENDS), TEXT),
    strategy=st.one_of(st.integers(0, 3), integers(-5, 9)),
)
prices = st.builds(
    BackendPrice,
    backend=st.one_of(st.sampled_from(BACKENDS), TEXT),
    input_usd_micros_per_million_tokens=st.one_of(st.integers(0, 10_000_000), integers(-(2**63), 2**63 - 1)),
    output_usd_micros_per_million_tokens=st.one_of(st.integers(0, 10_000_000), integers(-(2**63), 2**63 - 1)),
)
limits = st.builds(
    RoleRateLimit,
    role=st.one_of(st.integers(1, 5), st.integers(-1, 7)),
    rate_limit=st.one_of(st.sampled_from(LIMITS[:3]), st.sampled_from(LIMITS), TEXT),
)
configs = st.builds(
    Config,
    high_risk=policies,
    resources=policies,
    narrative=policies,
    danger_zone_policy=st.integers(-1, 5),
    prices=st.lists(prices, max_size=4),
    global_monthly_budget_usd_micros=st.one_of(st.integers(0, 10_000_000), integers(-(2**63), 2**63 - 1)),
    default_rate_limits=st.lists(limits, max_size=5),
)
masks = st.lists(
    st.one_of(st.sampled_from(TOP_LEVEL), st.sampled_from(["high_risk.backend", "narrative.strategy"])),
    min_size=1,
    max_size=4,
)


def _version(fuzzing: Fuzzing) -> int:
    _, [response] = fuzzing.caller.call(_BY_NAME["GetConfig"], b"", "admin")
    return admin_service_pb2.GetConfigResponse.FromString(response).config.version


@example(  # the reported lock-out: one role's limit, alone, made every other key's call INTERNAL
    config=Config(default_rate_limits=[RoleRateLimit(role=admin_service_pb2.ROLE_DEMO, rate_limit="5/minute")]),
    paths=["default_rate_limits"],
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, paths=masks)
def test_a_configuration_is_refused_or_breaks_no_call(fuzzing: Fuzzing, config: Config, paths: list[str]) -> None:
    before = _version(fuzzing)
    request = UpdateConfigRequest(
        config=config, update_mask=field_mask_pb2.FieldMask(paths=paths), expected_version=before
    )
    updated, _ = fuzzing.caller.call(_BY_NAME["UpdateConfig"], request.SerializeToString(), "admin")

    if updated.code == grpc.StatusCode.OK:
        assert _version(fuzzing) == before + 1
    else:
        assert updated.code == grpc.StatusCode.INVALID_ARGUMENT, updated
        assert updated.violations  # a refusal names its fields
        assert _version(fuzzing) == before  # and the current configuration stays

    calls = [
        (_BY_NAME["Classify"], classify_service_pb2.ClassifyRequest(case=CASE).SerializeToString(), caller)
        for caller in fuzzing.role_default_callers
    ]
    calls += [
        (_BY_NAME["Explain"], explain_service_pb2.ExplainRequest(case=CASE).SerializeToString(), caller)
        for caller in fuzzing.role_default_callers
    ]
    for outcome in fuzzing.caller.batch(calls):
        assert outcome.code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), outcome
