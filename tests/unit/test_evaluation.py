"""The evaluation command's arithmetic, and a clinical-safety guard on real triage data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from server.evaluation import Evaluation, case_from_row, evaluate_csv

DEMO_CSV = Path(__file__).resolve().parents[1] / "data" / "mimic-iv-ed-demo" / "triage_with_age.csv"


def test_perfect_agreement() -> None:
    result = Evaluation(pairs=Counter({(1, 1): 3, (3, 3): 5, (5, 5): 2}))

    assert result.rate("agree") == 1.0
    assert result.rate("under") == result.rate("over") == 0.0
    assert result.quadratic_kappa() == pytest.approx(1.0)


def test_under_and_over_triage_by_level() -> None:
    # ESI 1 is the most urgent: calling a nurse's 2 a 3 is under-triage.
    result = Evaluation(pairs=Counter({(2, 3): 1, (3, 2): 2, (3, 3): 1}))

    assert result.rate("under") == pytest.approx(0.25)
    assert result.rate("over") == pytest.approx(0.5)
    assert result.rate("within_one") == 1.0


def test_rows_are_cleaned_like_an_integration_would() -> None:
    row = {
        "age_at_visit": "57",
        "gender": "M",
        "temperature": "98.6",
        "heartrate": "99",
        "dbp": "879",
        "pain": "unable",
        "o2sat": "",
        "chiefcomplaint": "Psychiatric hold",
        "arrival_transport": "AMBULANCE",
    }

    case, dropped = case_from_row(row)

    assert dropped == 1  # the diastolic 879
    assert case.vitals.temperature_c == pytest.approx(37.0)
    assert not case.vitals.HasField("pain_score")
    assert not case.vitals.HasField("spo2_percent")


def test_high_acuity_patients_are_rarely_sent_to_the_waiting_room() -> None:
    """Safety guard: of the patients nurses rated ESI 1-2, few may come out ESI 4-5."""
    result = evaluate_csv(DEMO_CSV)

    high_acuity = sum(n for (nurse, _), n in result.pairs.items() if nurse <= 2)
    sent_to_wait = sum(n for (nurse, engine), n in result.pairs.items() if nurse <= 2 and engine >= 4)
    assert result.total == 207
    assert sent_to_wait / high_acuity < 0.05
    assert result.rate("within_one") > 0.9
