"""Bad input gets INVALID_ARGUMENT naming every bad field; no input crashes the pipeline."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import InvalidArgument
from server.esi.engine import RulesEngine
from server.pipeline.pipeline import Pipeline
from server.rate_limits import rate_limit_problem
from server.validation import VITAL_RANGES, Violation, duration_value, timestamp_value, validate_case
from tests.support import make_case
from triage.v1 import case_pb2

Mutation = Callable[[case_pb2.TriageCase], None]


def _set(path: str, value: object) -> Mutation:
    def mutate(case: case_pb2.TriageCase) -> None:
        *parents, name = path.split(".")
        target = case
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return mutate


# (mutation of a valid case, the field reported, the reason)
BAD = [
    (lambda c: c.ClearField("age"), "case.age", "REQUIRED"),
    (_set("age.years", 0), "case.age.years", "OUT_OF_RANGE"),
    (_set("age.years", 131), "case.age.years", "OUT_OF_RANGE"),
    (_set("age.months", 0), "case.age.months", "OUT_OF_RANGE"),
    (_set("age.months", 1561), "case.age.months", "OUT_OF_RANGE"),
    (_set("age.days", 50_000), "case.age.days", "OUT_OF_RANGE"),
    (_set("chief_complaint", "   "), "case.chief_complaint", "REQUIRED"),
    (_set("chief_complaint", "x" * 1001), "case.chief_complaint", "TOO_LONG"),
    (_set("history", "x" * 10_001), "case.history", "TOO_LONG"),
    (_set("case_ref", "x" * 129), "case.case_ref", "TOO_LONG"),
    (_set("case_ref", "a\x00b"), "case.case_ref", "INVALID_CHARACTERS"),
    (_set("sex", 9), "case.sex", "UNKNOWN_VALUE"),
    (_set("avpu", 12), "case.avpu", "UNKNOWN_VALUE"),
    (_set("arrival_mode", 40), "case.arrival_mode", "UNKNOWN_VALUE"),
    (lambda c: c.risk_factors.append(0), "case.risk_factors[0]", "UNKNOWN_VALUE"),
    (lambda c: c.risk_factors.append(77), "case.risk_factors[0]", "UNKNOWN_VALUE"),
    (_set("vitals.heart_rate_bpm", 351), "case.vitals.heart_rate_bpm", "OUT_OF_RANGE"),
    (_set("vitals.heart_rate_bpm", -1), "case.vitals.heart_rate_bpm", "OUT_OF_RANGE"),
    (_set("vitals.respiratory_rate_per_min", 121), "case.vitals.respiratory_rate_per_min", "OUT_OF_RANGE"),
    (_set("vitals.spo2_percent", 100.5), "case.vitals.spo2_percent", "OUT_OF_RANGE"),
    (_set("vitals.systolic_bp_mmhg", 351), "case.vitals.systolic_bp_mmhg", "OUT_OF_RANGE"),
    (_set("vitals.diastolic_bp_mmhg", 879), "case.vitals.diastolic_bp_mmhg", "OUT_OF_RANGE"),
    (_set("vitals.temperature_c", 19.9), "case.vitals.temperature_c", "OUT_OF_RANGE"),
    (_set("vitals.temperature_c", 101.3), "case.vitals.temperature_c", "OUT_OF_RANGE"),
    (_set("vitals.pain_score", 11), "case.vitals.pain_score", "OUT_OF_RANGE"),
    (_set("vitals.gcs", 2), "case.vitals.gcs", "OUT_OF_RANGE"),
    (_set("vitals.heart_rate_bpm", math.nan), "case.vitals.heart_rate_bpm", "NOT_FINITE"),
    (_set("vitals.spo2_percent", math.inf), "case.vitals.spo2_percent", "NOT_FINITE"),
    (_set("vitals.temperature_c", -math.inf), "case.vitals.temperature_c", "NOT_FINITE"),
]


@pytest.mark.parametrize(("mutate", "field", "reason"), BAD, ids=[f"{f}:{r}" for _, f, r in BAD])
def test_bad_field_is_named_with_its_reason(mutate: Mutation, field: str, reason: str) -> None:
    case = make_case("chest pain", "67y")
    mutate(case)

    with pytest.raises(InvalidArgument) as raised:
        validate_case(case)

    violations = {(v.field, v.reason) for v in raised.value.violations}
    assert (field, reason) in violations
    assert all(v.description for v in raised.value.violations)


def test_every_problem_is_reported_at_once() -> None:
    case = make_case(" ", "67y", vitals={"heart_rate_bpm": 999, "gcs": 1})
    case.sex = 42  # type: ignore[assignment]

    with pytest.raises(InvalidArgument) as raised:
        validate_case(case)

    assert {v.field for v in raised.value.violations} == {
        "case.chief_complaint",
        "case.vitals.heart_rate_bpm",
        "case.vitals.gcs",
        "case.sex",
    }


def test_limits_are_inclusive() -> None:
    vitals = {name: high for name, (_, high, _) in VITAL_RANGES.items()}
    case = validate_case(make_case("x" * 1000, "130y", vitals=vitals, history="y" * 10_000))

    assert case.vitals.gcs == 15
    assert case.age.text == "130 years"


def test_zero_vitals_are_values_not_absence() -> None:
    case = validate_case(make_case("found down", vitals={"heart_rate_bpm": 0}))

    assert case.vitals.heart_rate_bpm == 0
    assert case.vitals.respiratory_rate_per_min is None


_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_cases = st.builds(
    case_pb2.TriageCase,
    case_ref=st.text(max_size=140),
    chief_complaint=st.text(max_size=1100),
    history=st.text(max_size=300),
    sex=st.integers(0, 6),
    avpu=st.integers(0, 6),
    arrival_mode=st.integers(0, 9),
    acute_mental_status_change=st.booleans(),
    risk_factors=st.lists(st.integers(0, 9), max_size=4),
    age=st.one_of(
        st.none(),
        st.builds(case_pb2.Age, years=st.integers(0, 200)),
        st.builds(case_pb2.Age, months=st.integers(0, 2000)),
        st.builds(case_pb2.Age, days=st.integers(0, 60000)),
    ),
    vitals=st.builds(
        case_pb2.Vitals,
        heart_rate_bpm=_floats,
        respiratory_rate_per_min=_floats,
        spo2_percent=_floats,
        systolic_bp_mmhg=_floats,
        diastolic_bp_mmhg=_floats,
        temperature_c=_floats,
        pain_score=st.integers(-(2**31), 2**31 - 1),
        gcs=st.integers(-5, 20),
    ),
)
_PIPELINE = Pipeline(RulesEngine())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases)
def test_any_case_is_either_classified_or_rejected_clearly(message: case_pb2.TriageCase) -> None:
    try:
        case = validate_case(message)
    except InvalidArgument as error:
        rejected = error
    else:
        result = asyncio.run(_PIPELINE.classify(case))
        assert result.esi_level in (1, 2, 3, 4, 5)
        assert 0 < result.confidence <= 1
        assert result.rationale
        return
    assert rejected.violations
    assert all(v.field.startswith("case.") and v.reason for v in rejected.violations)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_read_without_error(text: str) -> None:
    case = validate_case(make_case(text if text.strip() else "pain", history=text))
    result = asyncio.run(_PIPELINE.classify(case))

    assert result.esi_level in (1, 2, 3, 4, 5)


# The well-known types and rate limits callers send (server/validation.py, server/rate_limits.py).


@pytest.mark.parametrize(
    ("seconds", "nanos", "fields"),
    [
        (-62_135_596_800, 0, []),  # 0001-01-01T00:00:00Z, the first instant a Timestamp holds
        (253_402_300_799, 999_999_999, []),  # 9999-12-31T23:59:59.999999999Z, the last
        (253_402_300_800, 0, ["t.seconds"]),
        (-62_135_596_801, 0, ["t.seconds"]),
        (0, -1, ["t.nanos"]),
        (0, 1_000_000_000, ["t.nanos"]),
        (2**63 - 1, -(2**31), ["t.seconds", "t.nanos"]),
    ],
)
def test_timestamps_out_of_range_are_named(seconds: int, nanos: int, fields: list[str]) -> None:
    violations: list[Violation] = []
    value = timestamp_value(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), "t", violations)

    assert [v.field for v in violations] == fields
    assert (value is None) == bool(fields)


@pytest.mark.parametrize(
    ("seconds", "nanos", "fields"),
    [
        (1, 5, []),
        (-1, -5, []),
        (0, -5, []),
        (1, -5, ["d.nanos"]),  # not normalized: the signs disagree
        (-1, 5, ["d.nanos"]),
        (315_576_000_001, 0, ["d.seconds"]),
        (2**62, 0, ["d.seconds"]),
        (0, 1_000_000_000, ["d.nanos"]),
        (200 * 365 * 86_400, 0, ["d"]),  # in range, over the maximum given
    ],
)
def test_durations_out_of_range_or_not_normalized_are_named(seconds: int, nanos: int, fields: list[str]) -> None:
    violations: list[Violation] = []
    value = duration_value(
        duration_pb2.Duration(seconds=seconds, nanos=nanos), "d", violations, maximum=timedelta(days=36_525)
    )

    assert [v.field for v in violations] == fields
    assert (value is None) == bool(fields)


@given(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1))
def test_any_duration_is_a_timedelta_or_a_violation(seconds: int, nanos: int) -> None:
    violations: list[Violation] = []
    value = duration_value(duration_pb2.Duration(seconds=seconds, nanos=nanos), "d", violations)

    assert (value is None) == bool(violations)


@pytest.mark.parametrize(
    ("text", "fine"),
    [
        ("20/day", True),
        ("10/second;1000/hour", True),
        ("0/minute", True),  # refuses every call: a policy, not a fault
        ("1 per 1 year", True),
        ("x", False),
        ("5/minute;", False),
        ("1000000001/second", False),
        ("1/2 year", False),  # the RetryInfo of a window longer than a year is no sensible answer
        ("1/99999999999999999999 day", False),
    ],
)
def test_rate_limits_are_bounded(text: str, fine: bool) -> None:
    assert (rate_limit_problem(text) is None) == fine
