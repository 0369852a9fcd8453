"""Labelled triage datasets, read into the same TriageCase an integration sends.

Two sources (each folder under tests/data has a README on what its labels mean):

- the MIMIC-IV-ED demo: 222 stays with the triage nurse's ESI level;
- NHAMCS ED 2016-2018 and 2020-2021: 60,346 US ED visits with the hospital's
  triage level, the ESI resources actually used and the outcomes.

Each visit becomes a `case_pb2.TriageCase` built the way an integration would
build it: implausible vital signs are dropped (and counted) rather than sent.
The same reader serves evaluation (server/evaluation.py) and training
(server/learned/train.py), so both see exactly the cases the service sees.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from server.validation import VITAL_RANGES
from triage.v1 import case_pb2

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
MIMIC_CSV = DATA_DIR / "mimic-iv-ed-demo" / "triage_with_age.csv"
NHAMCS_CSV = DATA_DIR / "nhamcs-ed" / "visits.csv.gz"
RFV_CODES_CSV = DATA_DIR / "nhamcs-ed" / "rfv_codes.csv"
# Fit and choose on these years; report on the rest (issue 9).
NHAMCS_TRAINING_YEARS = (2016, 2017, 2018)
NHAMCS_TEST_YEARS = (2020, 2021)
# Reasons for visit are joined as separate clauses: each is its own complaint.
RFV_SEPARATOR = "; "
UNRECORDED_COMPLAINT = "unknown"

_FAHRENHEIT_ABOVE = 50.0
_MIMIC_ARRIVAL = {
    "WALK IN": case_pb2.ARRIVAL_MODE_WALK_IN,
    "AMBULANCE": case_pb2.ARRIVAL_MODE_AMBULANCE,
    "HELICOPTER": case_pb2.ARRIVAL_MODE_HELICOPTER,
    "OTHER": case_pb2.ARRIVAL_MODE_OTHER,
}
_MIMIC_SEX = {"F": case_pb2.SEX_FEMALE, "M": case_pb2.SEX_MALE}
_MIMIC_VITALS = {
    "heartrate": "heart_rate_bpm",
    "resprate": "respiratory_rate_per_min",
    "o2sat": "spo2_percent",
    "sbp": "systolic_bp_mmhg",
    "dbp": "diastolic_bp_mmhg",
    "temperature": "temperature_c",
    "pain": "pain_score",
}
_NHAMCS_ARRIVAL = {"yes": case_pb2.ARRIVAL_MODE_AMBULANCE, "no": case_pb2.ARRIVAL_MODE_WALK_IN}
_NHAMCS_SEX = {"female": case_pb2.SEX_FEMALE, "male": case_pb2.SEX_MALE}
# NHAMCS columns carry the contract's own field names and units.
_NHAMCS_VITALS = tuple(name for name in VITAL_RANGES if name != "gcs")
# A critical outcome (issue 9): ICU admission, death in the ED, or a complex
# procedure (intubation, central line, CPR, BiPAP/CPAP).
_CRITICAL_COLUMNS = ("admitted_icu", "died_in_ed", "res_complex_procedure")


@dataclass(frozen=True, slots=True)
class LabelledVisit:
    """One visit: the case as sent, and what is known about it afterwards."""

    case: case_pb2.TriageCase
    # The triage nurse's (or hospital's) level, 1-5; None when not recorded.
    nurse_level: int | None
    # ESI resources actually used (NHAMCS esi_resource_count); None when unknown.
    resources_used: int | None = None
    # ICU, death in the ED, intubation, CPR, central line or BiPAP; None when unknown.
    critical_outcome: bool | None = None
    year: int | None = None
    # Vital signs dropped as implausible when the case was built.
    values_dropped: int = 0


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _set_vital(message: case_pb2.TriageCase, name: str, value: float) -> bool:
    """Sets a vital sign if it is plausible; False when it was dropped."""
    low, high, _ = VITAL_RANGES[name]
    if not low <= value <= high or (name == "pain_score" and value != int(value)):
        return False
    setattr(message.vitals, name, int(value) if name == "pain_score" else value)
    return True


def mimic_visit(row: dict[str, str]) -> LabelledVisit:
    """A MIMIC-IV-ED triage_with_age.csv row as a visit."""
    message = case_pb2.TriageCase(
        chief_complaint=row.get("chiefcomplaint", "").strip(),
        sex=_MIMIC_SEX.get(row.get("gender", ""), case_pb2.SEX_UNSPECIFIED),
        arrival_mode=_MIMIC_ARRIVAL.get(row.get("arrival_transport", ""), case_pb2.ARRIVAL_MODE_UNSPECIFIED),
        case_ref=row.get("stay_id", ""),
    )
    message.age.years = max(1, int(float(row["age_at_visit"])))
    dropped = 0
    for column, name in _MIMIC_VITALS.items():
        value = _number(row.get(column))
        if value is None:
            continue
        if name == "temperature_c" and value > _FAHRENHEIT_ABOVE:
            value = (value - 32) * 5 / 9
        dropped += not _set_vital(message, name, value)
    acuity = _number(row.get("acuity"))
    return LabelledVisit(message, int(acuity) if acuity is not None else None, values_dropped=dropped)


def mimic_visits(path: Path = MIMIC_CSV) -> Iterator[LabelledVisit]:
    """Every stay of the MIMIC-IV-ED demo (rows without a level included, nurse_level None)."""
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            yield mimic_visit(row)


def nhamcs_complaint(row: dict[str, str]) -> str:
    """The reasons for visit as one complaint line, most important first."""
    texts = (row.get(f"rfv{n}_text", "").strip() for n in range(1, 6))
    # 22 visits have no reason recorded; an integration would still send something.
    return RFV_SEPARATOR.join(t for t in texts if t) or UNRECORDED_COMPLAINT


def nhamcs_visit(row: dict[str, str]) -> LabelledVisit:
    """An NHAMCS visits.csv row as a visit."""
    message = case_pb2.TriageCase(
        chief_complaint=nhamcs_complaint(row),
        sex=_NHAMCS_SEX.get(row.get("sex", ""), case_pb2.SEX_UNSPECIFIED),
        arrival_mode=_NHAMCS_ARRIVAL.get(row.get("arrival_ambulance", ""), case_pb2.ARRIVAL_MODE_UNSPECIFIED),
    )
    age_years = int(_number(row.get("age_years")) or 0)
    age_days = _number(row.get("age_days"))
    if age_years >= 1:
        message.age.years = age_years
    else:
        # Under one year: days when recorded (0 = less than a day), else six months.
        message.age.days = max(1, int(age_days)) if age_days is not None else 182
    dropped = 0
    for name in _NHAMCS_VITALS:
        value = _number(row.get(name))
        if value is not None:
            dropped += not _set_vital(message, name, value)
    resources = _number(row.get("esi_resource_count"))
    outcomes = [_number(row.get(column)) for column in _CRITICAL_COLUMNS]
    critical: bool | None = any(o == 1 for o in outcomes)
    if not critical and any(o is None for o in outcomes):
        critical = None
    level = _number(row.get("triage_level"))
    return LabelledVisit(
        message,
        int(level) if level is not None else None,
        resources_used=int(resources) if resources is not None else None,
        critical_outcome=critical,
        year=int(row["year"]),
        values_dropped=dropped,
    )


def nhamcs_visits(
    path: Path = NHAMCS_CSV, years: Iterable[int] | None = None, *, include_suspect: bool = False
) -> Iterator[LabelledVisit]:
    """NHAMCS visits of the given years (all when None).

    Rows of hospital-years whose triage scale runs backwards
    (`triage_scale_suspect` = 1, see the README) are left out unless asked for.
    """
    wanted = frozenset(years) if years is not None else None
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            if wanted is not None and int(row["year"]) not in wanted:
                continue
            if not include_suspect and row.get("triage_scale_suspect") == "1":
                continue
            yield nhamcs_visit(row)


def rfv_codes(path: Path = RFV_CODES_CSV) -> dict[str, str]:
    """The NCHS Reason for Visit Classification: code -> label."""
    with path.open(newline="") as handle:
        return {row["code"]: row["text"] for row in csv.DictReader(handle)}
