"""The demo's case form: its fields, the TriageCase a submission makes, and where the API's violations go.

Inputs are named after their TriageCase field paths (`chief_complaint`, `vitals.heart_rate_bpm`); the
age is `age.value` with its unit in `age.unit`. The HTML constraints here are hints for the browser:
the server's field violations are what the page shows, next to the input they name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import EnumDescriptor
from starlette.datastructures import FormData

from triage_client import ArrivalMode, Avpu, RiskFactor, Sex, TriageCase

MAX_CHIEF_COMPLAINT_CHARS = 1_000
MAX_HISTORY_CHARS = 10_000
AGE_UNITS = ("years", "months", "days")  # the fields of the contract's Age
# The largest age in any unit (130 years in days); the server checks each unit's own limit.
MAX_AGE = 47_482


@dataclass(frozen=True)
class Vital:
    """A vital-sign input: its name, label, unit and the range the API accepts."""

    name: str
    label: str
    unit: str
    low: float
    high: float
    integer: bool = False

    @property
    def field(self) -> str:
        return self.name.removeprefix("vitals.")


VITALS = (
    Vital("vitals.heart_rate_bpm", "Heart rate", "beats per minute", 0, 350),
    Vital("vitals.respiratory_rate_per_min", "Respiratory rate", "breaths per minute", 0, 120),
    Vital("vitals.spo2_percent", "SpO2", "percent", 0, 100),
    Vital("vitals.systolic_bp_mmhg", "Systolic blood pressure", "mmHg", 0, 350),
    Vital("vitals.diastolic_bp_mmhg", "Diastolic blood pressure", "mmHg", 0, 250),
    Vital("vitals.temperature_c", "Temperature", "degrees Celsius", 20, 46),
    Vital("vitals.pain_score", "Pain score", "0 to 10", 0, 10, integer=True),
    Vital("vitals.gcs", "Glasgow Coma Scale", "3 to 15", 3, 15, integer=True),
)


@dataclass(frozen=True)
class Choice:
    value: str
    label: str


def _choices(enum: EnumDescriptor, prefix: str, labels: Mapping[str, str]) -> tuple[Choice, ...]:
    """The enum's values but UNSPECIFIED, as options valued by their names in lower case (SEX_FEMALE: female)."""
    values = [value.name.removeprefix(prefix).lower() for value in enum.values if value.number != 0]
    return tuple(Choice(value, labels[value]) for value in values)


SEXES = _choices(Sex.DESCRIPTOR, "SEX_", {"female": "Female", "male": "Male", "other": "Other"})
AVPU = _choices(
    Avpu.DESCRIPTOR,
    "AVPU_",
    {"alert": "Alert", "verbal": "Responds to voice", "pain": "Responds to pain", "unresponsive": "Unresponsive"},
)
ARRIVALS = _choices(
    ArrivalMode.DESCRIPTOR,
    "ARRIVAL_MODE_",
    {
        "walk_in": "Walk-in or private vehicle",
        "ambulance": "Ground ambulance",
        "helicopter": "Air ambulance",
        "police": "Police",
        "transfer": "Transfer from another facility",
        "other": "Other",
    },
)
RISK_FACTORS = _choices(
    RiskFactor.DESCRIPTOR,
    "RISK_FACTOR_",
    {
        "pregnant": "Pregnant",
        "immunocompromised": "Immunocompromised",
        "anticoagulated": "Anticoagulated",
        "incomplete_immunizations": "Incomplete immunizations",
        "active_cancer": "Active cancer",
        "bleeding_disorder": "Bleeding disorder",
        "dialysis": "Dialysis",
    },
)

# What each TriageCase field is called on the page, for findings and warnings that name their input.
FIELD_LABELS: dict[str, str] = {
    "age": "Age",
    "sex": "Sex",
    "chief_complaint": "Chief complaint",
    "history": "Triage note",
    "avpu": "AVPU",
    "acute_mental_status_change": "Acute change in mental status",
    "arrival_mode": "Arrival",
    "risk_factors": "Known risk factors",
    **{vital.field: vital.label for vital in VITALS},
    **{vital.name: vital.label for vital in VITALS},
}

FORM_NAMES = frozenset(
    {
        "age.value",
        "age.unit",
        "sex",
        "chief_complaint",
        "history",
        "avpu",
        "acute_mental_status_change",
        "arrival_mode",
        "risk_factors",
        *(vital.name for vital in VITALS),
    }
)
_INDEX = re.compile(r"\[\d+\]$")


def error_id(name: str) -> str:
    """The id of the element that holds an input's message: `error-vitals-heart_rate_bpm`."""
    return "error-" + name.replace(".", "-")


def input_id(name: str) -> str:
    return "f-" + name.replace(".", "-")


def field_label(path: str) -> str:
    """The page's name for a TriageCase field path (`case.vitals.spo2_percent` -> SpO2)."""
    path = _INDEX.sub("", path.removeprefix("case."))
    return FIELD_LABELS.get(path, FIELD_LABELS.get(path.split(".")[0], path))


def form_name(path: str) -> str | None:
    """The input a violation's field path belongs to, or None when it names no input of the form."""
    path = _INDEX.sub("", path.removeprefix("case."))
    if path == "age" or path.startswith("age."):
        return "age.value"
    name = path if path in FORM_NAMES else path.split(".")[0]
    return name if name in FORM_NAMES else None


@dataclass
class Submission:
    """A submitted form: the values to show again, the case they make, and the inputs that make none."""

    values: dict[str, str | list[str]]
    case: TriageCase
    errors: dict[str, str]


def values_of(form: FormData) -> dict[str, str | list[str]]:
    values: dict[str, str | list[str]] = {name: str(form.get(name, "")).strip() for name in FORM_NAMES}
    values["risk_factors"] = [str(v) for v in form.getlist("risk_factors")]
    values["acute_mental_status_change"] = "on" if form.get("acute_mental_status_change") else ""
    return values


def parse(form: FormData) -> Submission:
    """The TriageCase of a submission. Values the case cannot hold (not a number, no such option) are errors
    here; everything else, such as a missing complaint or a value out of range, is the server's to say."""
    values = values_of(form)
    case = TriageCase()
    errors: dict[str, str] = {}

    def text(name: str) -> str:
        value = values[name]
        assert isinstance(value, str)
        return value

    case.chief_complaint = text("chief_complaint")
    case.history = text("history")
    if text("age.value"):
        unit = text("age.unit") or "years"
        number = _number(text("age.value"), integer=True)
        if unit not in AGE_UNITS:
            errors["age.value"] = "choose years, months or days"
        elif number is None or number < 0 or number > 2**32 - 1:
            errors["age.value"] = "must be a whole number"
        else:
            setattr(case.age, unit, int(number))
    for vital in VITALS:
        raw = text(vital.name)
        if not raw:
            continue
        number = _number(raw, integer=vital.integer)
        if number is None or (vital.integer and abs(number) > 2**31 - 1):
            errors[vital.name] = "must be a whole number" if vital.integer else "must be a number"
        else:
            setattr(case.vitals, vital.field, int(number) if vital.integer else number)
    for name, enum, prefix, choices in (
        ("sex", Sex, "SEX_", SEXES),
        ("avpu", Avpu, "AVPU_", AVPU),
        ("arrival_mode", ArrivalMode, "ARRIVAL_MODE_", ARRIVALS),
    ):
        chosen = text(name)
        if chosen and chosen in {c.value for c in choices}:
            setattr(case, name, enum.Value(prefix + chosen.upper()))
        elif chosen:
            errors[name] = "choose one of the options"
    known = {c.value for c in RISK_FACTORS}
    risks = values["risk_factors"]
    assert isinstance(risks, list)
    if any(r not in known for r in risks):
        errors["risk_factors"] = "choose among the options"
    else:
        case.risk_factors.extend(RiskFactor.Value("RISK_FACTOR_" + r.upper()) for r in risks)
    case.acute_mental_status_change = bool(text("acute_mental_status_change"))
    return Submission(values=values, case=case, errors=errors)


def _number(text: str, *, integer: bool) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or (integer and not value.is_integer()):
        return None
    return value


def placed(violations: Iterable[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """The API's (field, description) violations: by form input, and those that name no input."""
    by_input: dict[str, str] = {}
    general: list[str] = []
    for path, description in violations:
        name = form_name(path)
        if name is None:
            general.append(f"{path}: {description}")
        else:
            by_input[name] = f"{by_input[name]}; {description}" if name in by_input else description
    return by_input, general
