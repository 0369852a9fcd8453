"""Request validation: a TriageCase, and the well-known types and limits every RPC takes.

Every problem is collected, not just the first, so an integration engineer
fixes a request in one round trip: INVALID_ARGUMENT with a BadRequest listing
each bad field, what is wrong, and a machine-readable reason. Timestamps,
durations and rate limits from callers are checked here, once, so that no
caller value reaches datetime arithmetic or a store out of range.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.rpc import error_details_pb2

from server.domain import Age, Case, Vitals
from server.errors import InvalidArgument, field_violation
from server.esi.tables import DAYS_PER_MONTH, DAYS_PER_YEAR
from triage.v1 import case_pb2

MAX_AGE_YEARS = 130
MAX_CHIEF_COMPLAINT_CHARS = 1_000
MAX_HISTORY_CHARS = 10_000
MAX_CASE_REF_CHARS = 128

# Plausible ranges (inclusive) for each vital sign, with the unit for messages.
VITAL_RANGES: dict[str, tuple[float, float, str]] = {
    "heart_rate_bpm": (0, 350, "bpm"),
    "respiratory_rate_per_min": (0, 120, "breaths/min"),
    "spo2_percent": (0, 100, "%"),
    "systolic_bp_mmhg": (0, 350, "mmHg"),
    "diastolic_bp_mmhg": (0, 250, "mmHg"),
    "temperature_c": (20, 46, "C"),
    "pain_score": (0, 10, "on the 0-10 scale"),
    "gcs": (3, 15, "on the Glasgow Coma Scale"),
}

# The largest age in each unit (130 years).
_AGE_LIMITS = {
    "years": MAX_AGE_YEARS,
    "months": MAX_AGE_YEARS * 12,
    "days": int(MAX_AGE_YEARS * DAYS_PER_YEAR),
}
_DAYS_PER_UNIT = {"years": DAYS_PER_YEAR, "months": DAYS_PER_MONTH, "days": 1.0}

Violation: TypeAlias = error_details_pb2.BadRequest.FieldViolation

# google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TIMESTAMP_MIN_SECONDS = -62_135_596_800
_TIMESTAMP_MAX_SECONDS = 253_402_300_799
# google.protobuf.Duration: about +-10,000 years.
_DURATION_MAX_SECONDS = 315_576_000_000
_NANOS_PER_SECOND = 1_000_000_000


def validate_case(message: case_pb2.TriageCase, path: str = "case") -> Case:
    """Returns the validated Case, or raises InvalidArgument naming every bad field."""
    violations: list[Violation] = []
    age = _age(message, path, violations)
    complaint = message.chief_complaint
    if not complaint.strip():
        violations.append(field_violation(f"{path}.chief_complaint", "the chief complaint is required", "REQUIRED"))
    _max_length(violations, f"{path}.chief_complaint", complaint, MAX_CHIEF_COMPLAINT_CHARS)
    _max_length(violations, f"{path}.history", message.history, MAX_HISTORY_CHARS)
    _max_length(violations, f"{path}.case_ref", message.case_ref, MAX_CASE_REF_CHARS)
    if "\x00" in message.case_ref:
        # It is stored in the audit log, and PostgreSQL text holds no NUL: one would fail the whole batch.
        violations.append(field_violation(f"{path}.case_ref", "must not contain NUL characters", "INVALID_CHARACTERS"))
    vitals = _vitals(message.vitals, f"{path}.vitals", violations)
    check_enum(violations, f"{path}.sex", case_pb2.Sex.DESCRIPTOR, message.sex)
    check_enum(violations, f"{path}.avpu", case_pb2.Avpu.DESCRIPTOR, message.avpu)
    check_enum(violations, f"{path}.arrival_mode", case_pb2.ArrivalMode.DESCRIPTOR, message.arrival_mode)
    for index, factor in enumerate(message.risk_factors):
        check_enum(
            violations,
            f"{path}.risk_factors[{index}]",
            case_pb2.RiskFactor.DESCRIPTOR,
            factor,
            allow_unspecified=False,
        )
    if violations or age is None:
        raise InvalidArgument(violations)
    return Case(
        age=age,
        chief_complaint=complaint,
        history=message.history,
        sex=message.sex,
        vitals=vitals,
        avpu=message.avpu,
        acute_mental_status_change=message.acute_mental_status_change,
        arrival_mode=message.arrival_mode,
        risk_factors=frozenset(message.risk_factors),
        case_ref=message.case_ref,
    )


def _age(message: case_pb2.TriageCase, path: str, violations: list[Violation]) -> Age | None:
    field = f"{path}.age"
    if not message.HasField("age"):
        violations.append(field_violation(field, "the age is required", "REQUIRED"))
        return None
    unit = message.age.WhichOneof("value")
    if unit is None:
        violations.append(field_violation(field, "the age needs one of years, months or days", "REQUIRED"))
        return None
    value: int = getattr(message.age, unit)
    limit = _AGE_LIMITS[unit]
    if value > limit:
        violations.append(
            field_violation(
                f"{field}.{unit}", f"must be at most {limit} {unit} (130 years); got {value}", "OUT_OF_RANGE"
            )
        )
        return None
    if unit == "years" and value < 1:
        violations.append(
            field_violation(
                f"{field}.years",
                "must be at least 1: give months or days for infants under one year, whose thresholds change "
                "at 28 days and 3 months",
                "OUT_OF_RANGE",
            )
        )
        return None
    if unit == "months" and value < 1:
        violations.append(
            field_violation(
                f"{field}.months", "must be at least 1: give days for infants under one month", "OUT_OF_RANGE"
            )
        )
        return None
    singular = unit.removesuffix("s")
    return Age(days=value * _DAYS_PER_UNIT[unit], text=f"{value} {singular if value == 1 else unit}")


def _vitals(message: case_pb2.Vitals, path: str, violations: list[Violation]) -> Vitals:
    # Only fields the caller set are listed: an absent vital is "not measured".
    values: dict[str, float] = {field.name: value for field, value in message.ListFields()}
    for name, value in values.items():
        low, high, unit = VITAL_RANGES[name]
        if not math.isfinite(value):
            violations.append(field_violation(f"{path}.{name}", f"must be a finite number; got {value}", "NOT_FINITE"))
        elif not low <= value <= high:
            violations.append(
                field_violation(
                    f"{path}.{name}", f"must be between {low:g} and {high:g} {unit}; got {value:g}", "OUT_OF_RANGE"
                )
            )
    return Vitals(**values)  # type: ignore[arg-type]  # the names are Vitals' fields


def _max_length(violations: list[Violation], field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        violations.append(
            field_violation(field, f"must be at most {limit:,} characters; got {len(text):,}", "TOO_LONG")
        )


def check_enum(
    violations: list[Violation],
    field: str,
    enum: EnumDescriptor,
    value: int,
    *,
    allow_unspecified: bool = True,
) -> None:
    """Adds a violation when `value` is none of `enum`'s (an open proto3 enum carries any number)."""
    if value not in enum.values_by_number or (value == 0 and not allow_unspecified):
        names = ", ".join(v.name for v in enum.values if v.number != 0)
        violations.append(field_violation(field, f"unknown value {value}; expected one of {names}", "UNKNOWN_VALUE"))


def timestamp_value(stamp: timestamp_pb2.Timestamp, field: str, violations: list[Violation]) -> datetime | None:
    """The Timestamp as an aware UTC datetime; None, with a violation, when out of the Timestamp range."""
    ok = True
    if not _TIMESTAMP_MIN_SECONDS <= stamp.seconds <= _TIMESTAMP_MAX_SECONDS:
        violations.append(
            field_violation(
                f"{field}.seconds",
                f"must be between {_TIMESTAMP_MIN_SECONDS} (0001-01-01) and {_TIMESTAMP_MAX_SECONDS} (9999-12-31); "
                f"got {stamp.seconds}",
                "OUT_OF_RANGE",
            )
        )
        ok = False
    if not 0 <= stamp.nanos < _NANOS_PER_SECOND:
        violations.append(
            field_violation(f"{field}.nanos", f"must be between 0 and 999999999; got {stamp.nanos}", "OUT_OF_RANGE")
        )
        ok = False
    return stamp.ToDatetime(UTC) if ok else None


def duration_value(
    duration: duration_pb2.Duration, field: str, violations: list[Violation], *, maximum: timedelta | None = None
) -> timedelta | None:
    """The Duration as a timedelta; None, with a violation, when out of range or not normalized."""
    seconds, nanos = duration.seconds, duration.nanos
    problems = len(violations)
    if not -_DURATION_MAX_SECONDS <= seconds <= _DURATION_MAX_SECONDS:
        violations.append(
            field_violation(
                f"{field}.seconds", f"must be within +-{_DURATION_MAX_SECONDS}; got {seconds}", "OUT_OF_RANGE"
            )
        )
    if not -_NANOS_PER_SECOND < nanos < _NANOS_PER_SECOND:
        violations.append(field_violation(f"{field}.nanos", f"must be within +-999999999; got {nanos}", "OUT_OF_RANGE"))
    elif seconds * nanos < 0:
        violations.append(
            field_violation(f"{field}.nanos", "must have the sign of seconds (a normalized Duration)", "NOT_NORMALIZED")
        )
    if len(violations) > problems:
        return None
    value = duration.ToTimedelta()
    if maximum is not None and value > maximum:
        violations.append(
            field_violation(field, f"must be at most {maximum.days} days; got {seconds} seconds", "OUT_OF_RANGE")
        )
        return None
    return value
