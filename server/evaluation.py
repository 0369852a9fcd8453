"""Evaluates the rules engine against nurse-labelled triage data (MIMIC-IV-ED CSV).

Reads rows in the layout of MIMIC-IV-ED's triage joined with edstays and
patients (triage_with_age.csv), builds each case through the same validation
as the server (implausible values are dropped and counted, as an integration
would), and reports agreement, a confusion matrix and under/over-triage. The
labels are one nurse's rating, not truth: read the per-level rows.
"""

from __future__ import annotations

import asyncio
import csv
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from server.esi.engine import DangerZonePolicy, RulesEngine
from server.pipeline.pipeline import Pipeline
from server.validation import VITAL_RANGES, validate_case
from triage.v1 import case_pb2

LEVELS = (1, 2, 3, 4, 5)
_ARRIVAL = {
    "WALK IN": case_pb2.ARRIVAL_MODE_WALK_IN,
    "AMBULANCE": case_pb2.ARRIVAL_MODE_AMBULANCE,
    "HELICOPTER": case_pb2.ARRIVAL_MODE_HELICOPTER,
    "OTHER": case_pb2.ARRIVAL_MODE_OTHER,
}
_SEX = {"F": case_pb2.SEX_FEMALE, "M": case_pb2.SEX_MALE}
# MIMIC column -> Vitals field.
_VITAL_COLUMNS = {
    "heartrate": "heart_rate_bpm",
    "resprate": "respiratory_rate_per_min",
    "o2sat": "spo2_percent",
    "sbp": "systolic_bp_mmhg",
    "dbp": "diastolic_bp_mmhg",
    "temperature": "temperature_c",
    "pain": "pain_score",
}
_FAHRENHEIT_ABOVE = 50.0


@dataclass
class Evaluation:
    """Agreement between the engine and the nurse's ESI level."""

    pairs: Counter[tuple[int, int]] = field(default_factory=Counter)
    rows: int = 0
    unlabelled: int = 0
    values_dropped: int = 0

    @property
    def total(self) -> int:
        return sum(self.pairs.values())

    def rate(self, outcome: Literal["agree", "under", "over", "within_one"]) -> float:
        """Share of cases where the engine agrees, is less urgent (under), more urgent (over), or within one."""
        hits = sum(n for (nurse, engine), n in self.pairs.items() if _outcome(nurse, engine, outcome))
        return hits / self.total if self.total else 0.0

    def quadratic_kappa(self) -> float:
        """Cohen's kappa with quadratic weights, the usual statistic for ordinal triage scales."""
        total = self.total
        if not total:
            return 0.0
        nurse: Counter[int] = Counter()
        engine: Counter[int] = Counter()
        for (a, b), n in self.pairs.items():
            nurse[a] += n
            engine[b] += n
        observed = expected = 0.0
        for a in LEVELS:
            for b in LEVELS:
                weight = (a - b) ** 2 / (len(LEVELS) - 1) ** 2
                observed += weight * self.pairs[(a, b)] / total
                expected += weight * nurse[a] * engine[b] / total**2
        return 1 - observed / expected if expected else 1.0

    def report(self) -> str:
        lines = [
            f"rows {self.rows}; evaluated {self.total}; without a nurse level {self.unlabelled}; "
            f"implausible values dropped {self.values_dropped}",
            f"exact agreement {self.rate('agree'):.1%}   within one level {self.rate('within_one'):.1%}   "
            f"quadratic-weighted kappa {self.quadratic_kappa():.2f}",
            f"under-triage (engine less urgent than the nurse) {self.rate('under'):.1%}   "
            f"over-triage (more urgent) {self.rate('over'):.1%}",
            "",
            "confusion matrix: rows are the nurse's level, columns the engine's",
            "          " + "".join(f"ESI {b:<4}" for b in LEVELS) + "  total  agree  under  over",
        ]
        for a in LEVELS:
            row = [self.pairs[(a, b)] for b in LEVELS]
            total = sum(row)
            under = sum(self.pairs[(a, b)] for b in LEVELS if b > a)
            over = sum(self.pairs[(a, b)] for b in LEVELS if b < a)
            lines.append(
                f"  ESI {a}   " + "".join(f"{n:<8}" for n in row) + f"{total:<7}{_share(row[a - 1], total):<7}"
                f"{_share(under, total):<7}{_share(over, total)}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "evaluated": self.total,
            "rows": self.rows,
            "unlabelled": self.unlabelled,
            "values_dropped": self.values_dropped,
            "exact_agreement": round(self.rate("agree"), 4),
            "within_one_level": round(self.rate("within_one"), 4),
            "quadratic_weighted_kappa": round(self.quadratic_kappa(), 4),
            "under_triage": round(self.rate("under"), 4),
            "over_triage": round(self.rate("over"), 4),
            "confusion_matrix": {f"nurse_esi_{a}": [self.pairs[(a, b)] for b in LEVELS] for a in LEVELS},
        }


def _outcome(nurse: int, engine: int, outcome: str) -> bool:
    # ESI 1 is the most urgent: a higher engine level is under-triage.
    if outcome == "agree":
        return engine == nurse
    if outcome == "under":
        return engine > nurse
    if outcome == "over":
        return engine < nurse
    return abs(engine - nurse) <= 1


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def case_from_row(row: dict[str, str]) -> tuple[case_pb2.TriageCase, int]:
    """The TriageCase for a CSV row, and how many implausible values were dropped."""
    message = case_pb2.TriageCase(
        chief_complaint=row.get("chiefcomplaint", "").strip(),
        sex=_SEX.get(row.get("gender", ""), case_pb2.SEX_UNSPECIFIED),
        arrival_mode=_ARRIVAL.get(row.get("arrival_transport", ""), case_pb2.ARRIVAL_MODE_UNSPECIFIED),
        case_ref=row.get("stay_id", ""),
    )
    message.age.years = max(1, int(float(row["age_at_visit"])))
    dropped = 0
    for column, name in _VITAL_COLUMNS.items():
        value = _number(row.get(column, ""))
        if value is None:
            continue
        if name == "temperature_c" and value > _FAHRENHEIT_ABOVE:
            value = (value - 32) * 5 / 9
        low, high, _ = VITAL_RANGES[name]
        if not low <= value <= high or (name == "pain_score" and value != int(value)):
            dropped += 1
            continue
        setattr(message.vitals, name, int(value) if name == "pain_score" else value)
    return message, dropped


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


async def evaluate_rows(rows: Iterable[dict[str, str]], pipeline: Pipeline) -> Evaluation:
    result = Evaluation()
    for row in rows:
        result.rows += 1
        if not row.get("acuity", "").strip():
            result.unlabelled += 1
            continue
        message, dropped = case_from_row(row)
        result.values_dropped += dropped
        classified = await pipeline.classify(validate_case(message))
        result.pairs[(int(float(row["acuity"])), classified.esi_level)] += 1
    return result


def evaluate_csv(path: Path, danger_zone_policy: DangerZonePolicy = "up_triage") -> Evaluation:
    pipeline = Pipeline(RulesEngine(), danger_zone_policy=danger_zone_policy)
    with path.open(newline="") as handle:
        return asyncio.run(evaluate_rows(csv.DictReader(handle), pipeline))
