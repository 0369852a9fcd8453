"""Age-aware reading of vital signs into named states ("hypotension", "fever").

Thresholds come from data/vitals.toml. Each state carries the evidence a
nurse would write ("SpO2 88 % < 90 %") and the field it came from, so rules
and findings never need to re-derive them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from server.domain import Case
from server.esi.tables import DAYS_PER_YEAR, AgeBand, DangerZoneBand, VitalThresholds
from triage.v1 import case_pb2

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
FIELD_LABELS = {
    HEART_RATE: "heart rate",
    RESPIRATORY_RATE: "respiratory rate",
    SPO2: "SpO2",
    SYSTOLIC: "systolic blood pressure",
    DIASTOLIC: "diastolic blood pressure",
    TEMPERATURE: "temperature",
    PAIN: "pain score",
    GCS: "GCS",
}

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
    """Every state the case's vital signs and responsiveness are in, with its evidence."""
    v = case.vitals
    days = case.age.days
    age = case.age.text
    states: dict[str, VitalState] = {}

    def add(code: str, field: str, text: str) -> None:
        states.setdefault(code, VitalState(code, text, field))

    spo2 = v.spo2_percent
    if spo2 is not None:
        for code, limit in (
            ("life_threatening_hypoxia", t.spo2_life_saving_below),
            ("danger_zone_spo2", t.spo2_danger_zone_below),
            ("low_spo2", t.spo2_low_below),
        ):
            if spo2 < limit:
                add(code, SPO2, f"SpO2 {_number(spo2)} % < {_number(limit)} %")

    heart_rate = v.heart_rate_bpm
    if heart_rate is not None:
        rates = band_for(t.heart_rate, days)
        zone = danger_zone_band(t, days)
        text = f"heart rate {_number(heart_rate)}/min"
        if heart_rate == 0:
            add("no_pulse", HEART_RATE, f"{text}: no pulse")
        if heart_rate < rates.bradycardia_below:
            add("severe_bradycardia", HEART_RATE, f"{text} < {_number(rates.bradycardia_below)}/min for age {age}")
        if heart_rate >= rates.tachycardia_at_or_above:
            add(
                "extreme_tachycardia",
                HEART_RATE,
                f"{text} >= {_number(rates.tachycardia_at_or_above)}/min for age {age}",
            )
        if heart_rate > zone.heart_rate_above:
            add("danger_zone_heart_rate", HEART_RATE, f"{text} > {_number(zone.heart_rate_above)}/min for age {age}")

    respiratory_rate = v.respiratory_rate_per_min
    if respiratory_rate is not None:
        zone = danger_zone_band(t, days)
        text = f"respiratory rate {_number(respiratory_rate)}/min"
        if respiratory_rate < t.respiratory_rate_life_saving_below:
            add("hypoventilation", RESPIRATORY_RATE, f"{text} < {_number(t.respiratory_rate_life_saving_below)}/min")
        if respiratory_rate > zone.respiratory_rate_above:
            add(
                "danger_zone_respiratory_rate",
                RESPIRATORY_RATE,
                f"{text} > {_number(zone.respiratory_rate_above)}/min for age {age}",
            )

    systolic, diastolic = v.systolic_bp_mmhg, v.diastolic_bp_mmhg
    if systolic is not None:
        low = band_for(t.hypotension, days)
        floor = low.systolic_below + low.plus_per_year_of_age * int(days // DAYS_PER_YEAR)
        text = f"systolic BP {_number(systolic)} mmHg"
        if systolic < floor:
            add("hypotension", SYSTOLIC, f"{text} < {_number(floor)} mmHg for age {age}")
        profound = floor - t.profound_hypotension_margin_mmhg
        if systolic < profound:
            add("profound_hypotension", SYSTOLIC, f"{text} < {_number(profound)} mmHg for age {age}")
    if days >= t.hypertension_min_age:
        for code, systolic_limit, diastolic_limit in (
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
            if systolic is not None and systolic >= systolic_limit:
                add(code, SYSTOLIC, f"systolic BP {_number(systolic)} mmHg >= {_number(systolic_limit)} mmHg")
            elif diastolic is not None and diastolic >= diastolic_limit:
                add(code, DIASTOLIC, f"diastolic BP {_number(diastolic)} mmHg >= {_number(diastolic_limit)} mmHg")

    temperature = v.temperature_c
    if temperature is not None:
        text = f"temperature {_number(temperature)} C"
        for code, holds, limit_text in (
            ("fever", temperature >= t.fever_at_or_above_c, f">= {_number(t.fever_at_or_above_c)} C"),
            ("high_fever", temperature > t.high_fever_above_c, f"> {_number(t.high_fever_above_c)} C"),
            ("hypothermia", temperature < t.hypothermia_below_c, f"< {_number(t.hypothermia_below_c)} C"),
            (
                "infant_hypothermia",
                temperature < t.infant_hypothermia_below_c,
                f"< {_number(t.infant_hypothermia_below_c)} C",
            ),
        ):
            if holds:
                add(code, TEMPERATURE, f"{text} {limit_text}")

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
