"""Age-aware reading of vital signs into named states ("hypotension", "fever").

Thresholds come from data/vitals.toml. Each state carries the evidence a
nurse would write ("SpO2 88 % < 90 %") and the field it came from, so rules
and findings never need to re-derive them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from triage.v1 import case_pb2

from server.esi.tables import DAYS_PER_YEAR, AgeBand, DangerZoneBand, VitalThresholds
from server.pipeline.model import Case

STATE_CODES = frozenset(
    {
        "life_threatening_hypoxia",
        "danger_zone_spo2",
        "low_spo2",
        "hypoventilation",
        "no_pulse",
        "hypotension",
        "profound_hypotension",
        "severe_bradycardia",
        "extreme_tachycardia",
        "danger_zone_heart_rate",
        "danger_zone_respiratory_rate",
        "fever",
        "high_fever",
        "hypothermia",
        "infant_hypothermia",
        "severe_hypertension",
        "extreme_hypertension",
        "gcs_unresponsive",
        "gcs_reduced",
        "avpu_unresponsive",
        "avpu_verbal",
        "acute_mental_status_change",
        "severe_pain",
        "very_severe_pain",
    }
)

HEART_RATE = "vitals.heart_rate_bpm"
RESPIRATORY_RATE = "vitals.respiratory_rate_per_min"
SPO2 = "vitals.spo2_percent"
SYSTOLIC = "vitals.systolic_bp_mmhg"
DIASTOLIC = "vitals.diastolic_bp_mmhg"
TEMPERATURE = "vitals.temperature_c"
PAIN = "vitals.pain_score"
GCS = "vitals.gcs"

_Band = TypeVar("_Band", bound=AgeBand)


@dataclass(frozen=True, slots=True)
class VitalState:
    """A named state of the vital signs with its evidence."""

    code: str
    text: str
    input_field: str


def band_for(bands: Sequence[_Band], age_days: float) -> _Band:
    """The first band that contains the age; the tables end with a catch-all."""
    for band in bands:
        if band.contains(age_days):
            return band
    raise LookupError(f"no age band for {age_days} days")


def danger_zone_band(thresholds: VitalThresholds, age_days: float) -> DangerZoneBand:
    return band_for(thresholds.danger_zone, age_days)


def _number(value: float) -> str:
    return f"{value:g}"


def assess_vitals(case: Case, t: VitalThresholds) -> dict[str, VitalState]:
    """Every state the case's vital signs and responsiveness are in."""
    v = case.vitals
    days = case.age.days
    states: dict[str, VitalState] = {}

    def add(code: str, field: str, text: str) -> None:
        states.setdefault(code, VitalState(code, text, field))

    def check(value: float | None, field: str, rules: list[tuple[str, Callable[[float], bool], str]]) -> None:
        if value is None:
            return
        for code, test, text in rules:
            if test(value):
                add(code, field, text.format(value=_number(value)))

    check(
        v.spo2_percent,
        SPO2,
        [
            (
                "life_threatening_hypoxia",
                lambda x: x < t.spo2_life_saving_below,
                f"SpO2 {{value}} % < {_number(t.spo2_life_saving_below)} %",
            ),
            (
                "danger_zone_spo2",
                lambda x: x < t.spo2_danger_zone_below,
                f"SpO2 {{value}} % < {_number(t.spo2_danger_zone_below)} %",
            ),
            ("low_spo2", lambda x: x < t.spo2_low_below, f"SpO2 {{value}} % < {_number(t.spo2_low_below)} %"),
        ],
    )

    zone = danger_zone_band(t, days)
    rates = band_for(t.heart_rate, days)
    check(
        v.heart_rate_bpm,
        HEART_RATE,
        [
            ("no_pulse", lambda x: x == 0, "heart rate 0/min: no pulse"),
            (
                "severe_bradycardia",
                lambda x: x < rates.bradycardia_below,
                f"heart rate {{value}}/min < {_number(rates.bradycardia_below)}/min for age {case.age.text}",
            ),
            (
                "extreme_tachycardia",
                lambda x: x >= rates.tachycardia_at_or_above,
                f"heart rate {{value}}/min >= {_number(rates.tachycardia_at_or_above)}/min for age {case.age.text}",
            ),
            (
                "danger_zone_heart_rate",
                lambda x: x > zone.heart_rate_above,
                f"heart rate {{value}}/min > {_number(zone.heart_rate_above)}/min for age {case.age.text}",
            ),
        ],
    )
    check(
        v.respiratory_rate_per_min,
        RESPIRATORY_RATE,
        [
            (
                "hypoventilation",
                lambda x: x < t.respiratory_rate_life_saving_below,
                f"respiratory rate {{value}}/min < {_number(t.respiratory_rate_life_saving_below)}/min",
            ),
            (
                "danger_zone_respiratory_rate",
                lambda x: x > zone.respiratory_rate_above,
                f"respiratory rate {{value}}/min > {_number(zone.respiratory_rate_above)}/min for age {case.age.text}",
            ),
        ],
    )

    low = band_for(t.hypotension, days)
    systolic_floor = low.systolic_below + low.plus_per_year_of_age * int(days // DAYS_PER_YEAR)
    profound_floor = systolic_floor - t.profound_hypotension_margin_mmhg
    check(
        v.systolic_bp_mmhg,
        SYSTOLIC,
        [
            (
                "hypotension",
                lambda x: x < systolic_floor,
                f"systolic BP {{value}} mmHg < {_number(systolic_floor)} mmHg for age {case.age.text}",
            ),
            (
                "profound_hypotension",
                lambda x: x < profound_floor,
                f"systolic BP {{value}} mmHg < {_number(profound_floor)} mmHg for age {case.age.text}",
            ),
        ],
    )
    if days >= t.hypertension_min_age:
        for code, systolic, diastolic in (
            (
                "extreme_hypertension",
                t.extreme_hypertension_systolic_at_or_above,
                t.extreme_hypertension_diastolic_at_or_above,
            ),
            (
                "severe_hypertension",
                t.severe_hypertension_systolic_at_or_above,
                t.severe_hypertension_diastolic_at_or_above,
            ),
        ):
            if v.systolic_bp_mmhg is not None and v.systolic_bp_mmhg >= systolic:
                add(code, SYSTOLIC, f"systolic BP {_number(v.systolic_bp_mmhg)} mmHg >= {_number(systolic)} mmHg")
            elif v.diastolic_bp_mmhg is not None and v.diastolic_bp_mmhg >= diastolic:
                add(code, DIASTOLIC, f"diastolic BP {_number(v.diastolic_bp_mmhg)} mmHg >= {_number(diastolic)} mmHg")

    check(
        v.temperature_c,
        TEMPERATURE,
        [
            (
                "fever",
                lambda x: x >= t.fever_at_or_above_c,
                f"temperature {{value}} C >= {_number(t.fever_at_or_above_c)} C",
            ),
            (
                "high_fever",
                lambda x: x > t.high_fever_above_c,
                f"temperature {{value}} C > {_number(t.high_fever_above_c)} C",
            ),
            (
                "hypothermia",
                lambda x: x < t.hypothermia_below_c,
                f"temperature {{value}} C < {_number(t.hypothermia_below_c)} C",
            ),
            (
                "infant_hypothermia",
                lambda x: x < t.infant_hypothermia_below_c,
                f"temperature {{value}} C < {_number(t.infant_hypothermia_below_c)} C",
            ),
        ],
    )

    if v.gcs is not None:
        if v.gcs <= t.gcs_unresponsive_at_or_below:
            add("gcs_unresponsive", GCS, f"GCS {v.gcs} <= {t.gcs_unresponsive_at_or_below}")
        elif v.gcs < 15:
            add("gcs_reduced", GCS, f"GCS {v.gcs} < 15")
    if case.avpu in (case_pb2.AVPU_PAIN, case_pb2.AVPU_UNRESPONSIVE):
        add("avpu_unresponsive", "avpu", f"AVPU {case_pb2.Avpu.Name(case.avpu).removeprefix('AVPU_').lower()}")
    elif case.avpu == case_pb2.AVPU_VERBAL:
        add("avpu_verbal", "avpu", "AVPU verbal: responds to voice only")
    if case.acute_mental_status_change:
        add("acute_mental_status_change", "acute_mental_status_change", "acute mental status change reported")
    if v.pain_score is not None:
        if v.pain_score >= t.severe_pain_at_or_above:
            add("severe_pain", PAIN, f"pain {v.pain_score}/10")
        if v.pain_score >= t.parenteral_analgesia_pain_at_or_above:
            add("very_severe_pain", PAIN, f"pain {v.pain_score}/10")
    return states
