"""The learned models' features: one function for training and for serving.

`features(facts)` turns what the rules engine read from a case (`CaseFacts`:
the concepts the complaint reader found, the validated age, sex, vital signs,
pain and arrival mode) into binary feature names. Training
(server/learned/train.py) and the request path (server/learned/estimates.py)
both call it on the facts of `RulesEngine.read`, so the model sees in training
exactly what it sees in service.

Families (the part of a name before the first colon; every case gets exactly
one feature of each family but `concept`):

- `concept:<id>`: each concept currently present (not negated, not history);
- `age:<bin>`: under 28 days, under 3 months, under 1 year, 1-2, 3-7, 8-17
  years, then by decade to 80 and over;
- `sex:<female|male|other|unknown>`;
- `arrival:<ambulance|not_ambulance|unknown>`: helicopter and interfacility
  transfer count as ambulance, police and other as not ambulance (NHAMCS
  records only "arrived by ambulance": yes, no or unknown);
- `heart_rate:<age band>:<bin>` and `respiratory_rate:<age band>:<bin>`, cut
  at the pediatric and adult limits of ESI's danger zone and PALS, by age band
  (under 1 year, 1-7, 8-17, 18 and over);
- `spo2:<bin>` (cut at 85, 90 (ESI A), 92 (ESI D) and 95 %),
  `systolic_bp:<age band>:<bin>` (PALS hypotension for children; 90, 180 and
  200 mmHg for adults), `temperature:<bin>` (35, 36, 38, 39, 40 C),
  `pain:<bin>` (0, 1-3, 4-6, 7-8, 9-10);
- each vital sign not measured gives `<family>:missing` (or
  `<family>:<band>:missing`), never an error.

`label(feature, facts)` names a feature for a finding from the case's own
values ("SpO2 88 %", "age 81 years", "arrived by ambulance") or, for a concept,
from the concept table's label: no patient text other than concept labels and
numbers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from functools import cache
from itertools import pairwise

from server.esi.engine import CaseFacts
from server.esi.tables import DAYS_PER_MONTH, DAYS_PER_YEAR, load_tables
from triage.v1 import case_pb2

CONCEPT = "concept"
AGE = "age"
SEX = "sex"
ARRIVAL = "arrival"
HEART_RATE = "heart_rate"
RESPIRATORY_RATE = "respiratory_rate"
SPO2 = "spo2"
SYSTOLIC_BP = "systolic_bp"
TEMPERATURE = "temperature"
PAIN = "pain"
MISSING = "missing"
UNKNOWN = "unknown"

# Families of which every case has exactly one feature (a one-hot group).
ONE_HOT_FAMILIES = (AGE, SEX, ARRIVAL, HEART_RATE, RESPIRATORY_RATE, SPO2, SYSTOLIC_BP, TEMPERATURE, PAIN)


def _bins(edges: Sequence[float], step: float) -> tuple[str, ...]:
    """Names of the bins [-inf, e0), [e0, e1), ..., [en, inf): "<60", "60-99", "140+"."""
    names = [f"<{edges[0]:g}"]
    names += [f"{low:g}-{round(high - step, 3):g}" for low, high in pairwise(edges)]
    names.append(f"{edges[-1]:g}+")
    return tuple(names)


# Age: the pediatric thresholds of ESI and PALS change at 28 days, 3 months,
# 1, 3, 8 and 18 years; then one bin per decade to 80 and over.
_Y = DAYS_PER_YEAR
_AGE_EDGES = (28.0, 3 * DAYS_PER_MONTH, *(years * _Y for years in (1, 3, 8, 18, 30, 40, 50, 60, 70, 80)))
_AGE_NAMES = tuple(
    f"{AGE}:{name}"
    for name in (
        "<28d",
        "28d-2mo",
        "3-11mo",
        "1-2y",
        "3-7y",
        "8-17y",
        "18-29y",
        "30-39y",
        "40-49y",
        "50-59y",
        "60-69y",
        "70-79y",
        "80y+",
    )
)

# Vital-sign age bands: infant, child, older child, adult.
_BAND_EDGES = (_Y, 8 * _Y, 18 * _Y)
_BAND_NAMES = ("<1y", "1-7y", "8-17y", "18y+")


class _Binned:
    """One vital sign cut at fixed edges, optionally with different edges by age band."""

    def __init__(
        self,
        family: str,
        edges_by_band: Sequence[Sequence[float]],
        step: float = 1,
        names: Sequence[str] | None = None,
    ) -> None:
        self.family = family
        banded = len(edges_by_band) > 1
        self.edges = tuple(tuple(e) for e in edges_by_band)
        self.names = tuple(
            tuple(f"{family}:{_BAND_NAMES[b]}:{n}" if banded else f"{family}:{n}" for n in names or _bins(edges, step))
            for b, edges in enumerate(self.edges)
        )
        self.missing = tuple(
            f"{family}:{_BAND_NAMES[b]}:{MISSING}" if banded else f"{family}:{MISSING}" for b in range(len(self.edges))
        )

    def feature(self, value: float | None, band: int) -> str:
        b = band if len(self.edges) > 1 else 0
        if value is None:
            return self.missing[b]
        return self.names[b][bisect_right(self.edges[b], value)]

    def all_names(self) -> tuple[str, ...]:
        return tuple(n for names in self.names for n in names) + self.missing


_HEART_RATE = _Binned(
    HEART_RATE,
    (
        (80, 100, 160, 180, 200),  # under 1 year: danger zone > 180 (< 3 months) or > 160
        (60, 80, 140, 160, 180),  # 1-7 years: danger zone > 160 (< 3 years) or > 140
        (50, 60, 100, 120, 140),  # 8-17 years: danger zone > 100
        (40, 50, 60, 100, 120, 140),  # adults: bradycardia < 50-60, danger zone > 100
    ),
)
_RESPIRATORY_RATE = _Binned(
    RESPIRATORY_RATE,
    (
        (20, 30, 50, 60, 70),  # under 1 year: danger zone > 50 (< 3 months) or > 40
        (15, 20, 30, 40, 50),  # 1-7 years: danger zone > 40 (< 3 years) or > 30
        (10, 12, 21, 25, 30),  # 8-17 years: danger zone > 20
        (8, 12, 21, 25, 30),  # adults: danger zone > 20, hypoventilation < 8-10
    ),
)
_SPO2 = _Binned(SPO2, ((85, 90, 92, 95),))  # ESI A: < 90 %; ESI D: < 92 %
_SYSTOLIC_BP = _Binned(
    SYSTOLIC_BP,
    (
        (70, 90, 120, 140),  # under 1 year (PALS hypotension < 60-70)
        (70, 90, 120, 140),  # 1-7 years (< 70 + 2 x years)
        (90, 100, 140, 160),  # 8-17 years (< 90 from 10 years)
        (80, 90, 100, 140, 160, 180, 200),  # adults: hypotension < 90, severe hypertension >= 180
    ),
)
_TEMPERATURE = _Binned(TEMPERATURE, ((35, 36, 38, 39, 40),), step=0.1)  # hypothermia < 35-36, fever >= 38, high > 39
_PAIN = _Binned(PAIN, ((1, 4, 7, 9),), names=("0", "1-3", "4-6", "7-8", "9-10"))  # ESI B: severe pain >= 7

_VITALS: tuple[tuple[_Binned, str], ...] = (
    (_HEART_RATE, "heart_rate_bpm"),
    (_RESPIRATORY_RATE, "respiratory_rate_per_min"),
    (_SPO2, "spo2_percent"),
    (_SYSTOLIC_BP, "systolic_bp_mmhg"),
    (_TEMPERATURE, "temperature_c"),
    (_PAIN, "pain_score"),
)

_SEX = {
    case_pb2.SEX_FEMALE: f"{SEX}:female",
    case_pb2.SEX_MALE: f"{SEX}:male",
    case_pb2.SEX_OTHER: f"{SEX}:other",
}
_SEX_UNKNOWN = f"{SEX}:{UNKNOWN}"
_AMBULANCE = f"{ARRIVAL}:ambulance"
_NOT_AMBULANCE = f"{ARRIVAL}:not_ambulance"
_ARRIVAL = {
    case_pb2.ARRIVAL_MODE_AMBULANCE: _AMBULANCE,
    case_pb2.ARRIVAL_MODE_HELICOPTER: _AMBULANCE,
    case_pb2.ARRIVAL_MODE_TRANSFER: _AMBULANCE,
    case_pb2.ARRIVAL_MODE_WALK_IN: _NOT_AMBULANCE,
    case_pb2.ARRIVAL_MODE_POLICE: _NOT_AMBULANCE,
    case_pb2.ARRIVAL_MODE_OTHER: _NOT_AMBULANCE,
}
_ARRIVAL_UNKNOWN = f"{ARRIVAL}:{UNKNOWN}"


@cache
def _concept_feature(concept_id: str) -> str:
    return f"{CONCEPT}:{concept_id}"


def features(facts: CaseFacts) -> list[str]:
    """The case's binary features, in a fixed order: concepts (as read), then one per family."""
    case = facts.case
    days = case.age.days
    vitals = case.vitals
    band = bisect_right(_BAND_EDGES, days)
    found = [_concept_feature(concept_id) for concept_id in facts.mentions]
    found.append(_AGE_NAMES[bisect_right(_AGE_EDGES, days)])
    found.append(_SEX.get(case.sex, _SEX_UNKNOWN))
    found.append(_ARRIVAL.get(case.arrival_mode, _ARRIVAL_UNKNOWN))
    for binned, field in _VITALS:
        found.append(binned.feature(getattr(vitals, field), band))
    return found


def family(feature: str) -> str:
    """The feature's family: `concept`, `age`, `heart_rate`, ..."""
    return feature.partition(":")[0]


def group(feature: str) -> str:
    """What a feature's contribution is measured against: its one-hot family, or the concept itself."""
    name = family(feature)
    return feature if name == CONCEPT else name


def possible_features() -> tuple[str, ...]:
    """Every feature but the concepts' (those come from the concept table)."""
    vitals = tuple(n for binned, _ in _VITALS for n in binned.all_names())
    return (*_AGE_NAMES, *_SEX.values(), _SEX_UNKNOWN, _AMBULANCE, _NOT_AMBULANCE, _ARRIVAL_UNKNOWN, *vitals)


# Labels, built from the case's own values.


@cache
def _concept_label_of(feature: str) -> str:
    concept_id = feature.partition(":")[2]
    concept = load_tables().concepts.get(concept_id)
    # A concept the tables no longer have (a model older than the tables) is named by its id.
    return concept.label if concept is not None else concept_id.replace("_", " ")


def _concept_label(feature: str, facts: CaseFacts) -> str:
    return _concept_label_of(feature)


def _age_label(feature: str, facts: CaseFacts) -> str:
    return f"age {facts.case.age.text}"


_SEX_LABELS = {
    f"{SEX}:female": "female",
    f"{SEX}:male": "male",
    f"{SEX}:other": "sex other",
    _SEX_UNKNOWN: "sex not given",
}
_ARRIVAL_LABELS = {
    case_pb2.ARRIVAL_MODE_AMBULANCE: "arrived by ambulance",
    case_pb2.ARRIVAL_MODE_HELICOPTER: "arrived by helicopter",
    case_pb2.ARRIVAL_MODE_TRANSFER: "transferred in",
    case_pb2.ARRIVAL_MODE_WALK_IN: "walked in",
    case_pb2.ARRIVAL_MODE_POLICE: "arrived with police",
    case_pb2.ARRIVAL_MODE_OTHER: "arrived other than by ambulance",
}


def _sex_label(feature: str, facts: CaseFacts) -> str:
    return _SEX_LABELS.get(feature, "sex not given")


def _arrival_label(feature: str, facts: CaseFacts) -> str:
    return _ARRIVAL_LABELS.get(facts.case.arrival_mode, "arrival mode not given")


def _vital_label(field: str, before: str, after: str, missing: str) -> Callable[[str, CaseFacts], str]:
    def describe(feature: str, facts: CaseFacts) -> str:
        value = getattr(facts.case.vitals, field)
        return missing if value is None else f"{before}{value:g}{after}"

    return describe


_LABELS: dict[str, Callable[[str, CaseFacts], str]] = {
    CONCEPT: _concept_label,
    AGE: _age_label,
    SEX: _sex_label,
    ARRIVAL: _arrival_label,
    HEART_RATE: _vital_label("heart_rate_bpm", "heart rate ", "/min", "heart rate not measured"),
    RESPIRATORY_RATE: _vital_label(
        "respiratory_rate_per_min", "respiratory rate ", "/min", "respiratory rate not measured"
    ),
    SPO2: _vital_label("spo2_percent", "SpO2 ", " %", "SpO2 not measured"),
    SYSTOLIC_BP: _vital_label("systolic_bp_mmhg", "systolic BP ", " mmHg", "blood pressure not measured"),
    TEMPERATURE: _vital_label("temperature_c", "temperature ", " C", "temperature not measured"),
    PAIN: _vital_label("pain_score", "pain ", "/10", "pain score not recorded"),
}


def label(feature: str, facts: CaseFacts) -> str:
    """A feature of this case as a finding names it: 'SpO2 88 %', 'age 81 years', 'dyspnea'."""
    describe = _LABELS.get(feature.partition(":")[0])
    return describe(feature, facts) if describe is not None else feature


# The TriageCase field each family of features is read from.
_INPUT_FIELDS = {AGE: "age", SEX: "sex", ARRIVAL: "arrival_mode"} | {
    binned.family: f"vitals.{field}" for binned, field in _VITALS
}


def input_field(feature: str, facts: CaseFacts) -> str:
    """The input a feature of this case came from: 'vitals.spo2_percent', 'chief_complaint', ..."""
    name, _, rest = feature.partition(":")
    if name == CONCEPT:
        mention = facts.mentions.get(rest)
        return mention.input_field if mention is not None else "chief_complaint"
    return _INPUT_FIELDS.get(name, "")
