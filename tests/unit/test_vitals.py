"""Vital-sign states at the thresholds of ESI.md and PALS, by age."""

from __future__ import annotations

import pytest

from server.esi.engine import RulesEngine
from server.esi.vitals import assess_vitals
from server.validation import validate_case
from tests.support import make_case

# (age, vitals, states that must hold, states that must not)
CASES = [
    # ESI.md D: the danger-zone table, just over and at each limit.
    ("2mo", {"heart_rate_bpm": 181}, {"danger_zone_heart_rate"}, set()),
    ("2mo", {"heart_rate_bpm": 180}, set(), {"danger_zone_heart_rate"}),
    ("2mo", {"respiratory_rate_per_min": 51}, {"danger_zone_respiratory_rate"}, set()),
    ("6mo", {"heart_rate_bpm": 161}, {"danger_zone_heart_rate"}, set()),
    ("6mo", {"heart_rate_bpm": 160}, set(), {"danger_zone_heart_rate"}),
    ("2y", {"respiratory_rate_per_min": 41}, {"danger_zone_respiratory_rate"}, set()),
    ("3y", {"heart_rate_bpm": 141}, {"danger_zone_heart_rate"}, set()),
    ("8y", {"heart_rate_bpm": 141}, {"danger_zone_heart_rate"}, set()),
    ("8y", {"respiratory_rate_per_min": 30}, set(), {"danger_zone_respiratory_rate"}),
    ("9y", {"heart_rate_bpm": 101}, {"danger_zone_heart_rate"}, set()),
    ("40y", {"heart_rate_bpm": 100}, set(), {"danger_zone_heart_rate"}),
    ("40y", {"respiratory_rate_per_min": 21}, {"danger_zone_respiratory_rate"}, set()),
    ("40y", {"spo2_percent": 91}, {"danger_zone_spo2"}, {"life_threatening_hypoxia"}),
    ("40y", {"spo2_percent": 92}, set(), {"danger_zone_spo2"}),
    # ESI.md A: SpO2 < 90 %.
    ("40y", {"spo2_percent": 89}, {"life_threatening_hypoxia"}, set()),
    # ESI.md: fever is >= 38.0 C; the toddler rule is > 39.0 C.
    ("18mo", {"temperature_c": 38.0}, {"fever"}, {"high_fever"}),
    ("18mo", {"temperature_c": 39.1}, {"fever", "high_fever"}, set()),
    ("60d", {"temperature_c": 36.4}, {"infant_hypothermia"}, {"hypothermia"}),
    # PALS hypotension: < 60 at 0-28 days, < 70 at 1-12 months, < 70 + 2 x years, < 90 from 10 years.
    ("10d", {"systolic_bp_mmhg": 59}, {"hypotension"}, set()),
    ("6mo", {"systolic_bp_mmhg": 69}, {"hypotension"}, set()),
    ("4y", {"systolic_bp_mmhg": 77}, {"hypotension"}, set()),
    ("4y", {"systolic_bp_mmhg": 78}, set(), {"hypotension"}),
    ("40y", {"systolic_bp_mmhg": 89}, {"hypotension"}, {"profound_hypotension"}),
    ("40y", {"systolic_bp_mmhg": 79}, {"hypotension", "profound_hypotension"}, set()),
    # Extreme rates and blood pressure (adults only for hypertension).
    ("40y", {"heart_rate_bpm": 150}, {"extreme_tachycardia"}, set()),
    ("40y", {"heart_rate_bpm": 39}, {"severe_bradycardia"}, set()),
    ("40y", {"heart_rate_bpm": 0}, {"no_pulse"}, set()),
    ("40y", {"systolic_bp_mmhg": 182}, {"severe_hypertension"}, {"extreme_hypertension"}),
    ("40y", {"diastolic_bp_mmhg": 131}, {"severe_hypertension", "extreme_hypertension"}, set()),
    ("12y", {"systolic_bp_mmhg": 190}, set(), {"severe_hypertension"}),
    # Responsiveness and pain.
    ("40y", {"gcs": 8}, {"gcs_unresponsive"}, {"gcs_reduced"}),
    ("40y", {"gcs": 14}, {"gcs_reduced"}, set()),
    ("40y", {"pain_score": 7}, {"severe_pain"}, {"very_severe_pain"}),
    ("40y", {"respiratory_rate_per_min": 5}, {"hypoventilation"}, set()),
]


@pytest.mark.parametrize(("age", "vitals", "present", "absent"), CASES)
def test_states(engine: RulesEngine, age: str, vitals: dict[str, float], present: set[str], absent: set[str]) -> None:
    case = validate_case(make_case("check", age, vitals=vitals))

    states = assess_vitals(case, engine.tables.vitals)

    assert present <= states.keys()
    assert not (absent & states.keys())


def test_states_name_their_value_and_field(engine: RulesEngine) -> None:
    case = validate_case(make_case("SOB", "70y", vitals={"spo2_percent": 88}))

    state = assess_vitals(case, engine.tables.vitals)["life_threatening_hypoxia"]

    assert state.text == "SpO2 88 % < 90 %"
    assert state.input_field == "vitals.spo2_percent"
