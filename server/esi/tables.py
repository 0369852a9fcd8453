"""The clinical tables of the rules engine, loaded from TOML and validated.

The knowledge lives in server/esi/data/*.toml so that a clinician can review it
without reading Python; this module only gives the tables types and checks
them (unknown keys, unknown concepts and bad ages fail at load, not mid-triage).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from triage.v1 import case_pb2, classification_pb2

DAYS_PER_YEAR = 365.25
DAYS_PER_MONTH = DAYS_PER_YEAR / 12
_AGE_SPEC = re.compile(r"^(\d+(?:\.\d+)?)(d|mo|y)$")
_DATA_FILES = ("lexicon.toml", "concepts.toml", "rules.toml", "resources.toml", "vitals.toml")


def age_days(spec: str) -> float:
    """Parses an age such as "28d", "3mo" or "65y" into days."""
    match = _AGE_SPEC.match(spec)
    if match is None:
        raise ValueError(f"age {spec!r} is not of the form 28d, 3mo or 65y")
    number, unit = float(match[1]), match[2]
    return number * {"d": 1.0, "mo": DAYS_PER_MONTH, "y": DAYS_PER_YEAR}[unit]


def within_ages(days: float, min_age: float | None, below_age: float | None, max_age: float | None) -> bool:
    """Whether an age is at least min_age, below below_age and at most max_age (None: no limit)."""
    return (
        (min_age is None or days >= min_age)
        and (below_age is None or days < below_age)
        and (max_age is None or days <= max_age)
    )


def _age_or_value(value: object) -> object:
    return age_days(value) if isinstance(value, str) else value


AgeDays = Annotated[float, BeforeValidator(_age_or_value)]
"""An age written in the tables as "28d", "3mo" or "65y", held in days."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceSpec(_Table):
    """One ESI resource, written in the tables as "kind" or "kind: detail"."""

    kind: classification_pb2.ResourceKind.ValueType
    detail: str

    @classmethod
    def parse(cls, text: str) -> ResourceSpec:
        name, _, detail = text.partition(":")
        enum_name = "RESOURCE_KIND_" + name.strip().upper()
        if enum_name not in classification_pb2.ResourceKind.keys():
            raise ValueError(f"unknown resource kind {name.strip()!r} in {text!r}")
        kind = classification_pb2.ResourceKind.Value(enum_name)
        return cls(kind=kind, detail=detail.strip() or RESOURCE_LABELS[kind])


RESOURCE_LABELS: dict[classification_pb2.ResourceKind.ValueType, str] = {
    classification_pb2.RESOURCE_KIND_LABS: "laboratory tests",
    classification_pb2.RESOURCE_KIND_ECG: "ECG",
    classification_pb2.RESOURCE_KIND_XRAY: "x-ray",
    classification_pb2.RESOURCE_KIND_ADVANCED_IMAGING: "CT, MRI or ultrasound",
    classification_pb2.RESOURCE_KIND_IV_FLUIDS: "IV fluids",
    classification_pb2.RESOURCE_KIND_PARENTERAL_MEDICATION: "IV, IM or nebulized medication",
    classification_pb2.RESOURCE_KIND_SPECIALTY_CONSULTATION: "specialty consultation",
    classification_pb2.RESOURCE_KIND_SIMPLE_PROCEDURE: "simple procedure",
    classification_pb2.RESOURCE_KIND_COMPLEX_PROCEDURE: "complex procedure",
}


def _parse_resources(value: object) -> object:
    if isinstance(value, list):
        return [ResourceSpec.parse(v) if isinstance(v, str) else v for v in value]
    return value


Resources = Annotated[tuple[ResourceSpec, ...], BeforeValidator(_parse_resources)]
"""Resources written in the tables as ["labs", "advanced_imaging: CT head"]."""


def _risk_factor(value: object) -> object:
    if not isinstance(value, str):
        return value
    enum_name = "RISK_FACTOR_" + value.upper()
    if enum_name not in case_pb2.RiskFactor.keys() or value == "unspecified":
        raise ValueError(f"unknown risk factor {value!r}")
    return case_pb2.RiskFactor.Value(enum_name)


RiskFactorName = Annotated[case_pb2.RiskFactor.ValueType, BeforeValidator(_risk_factor)]
"""A risk factor written in the tables as "pregnant", "anticoagulated", ..."""


class Condition(_Table):
    """When a rule applies: every group given must match; within a group, any item.

    concepts/with_concepts/unless_concepts name concepts mentioned (currently,
    not negated) in the chief complaint or history; states/with_states/
    unless_states name vital-sign states from vitals.py; ages are "28d", "3mo", "65y" (min inclusive,
    below exclusive, max inclusive).
    """

    concepts: tuple[str, ...] = ()
    with_concepts: tuple[str, ...] = ()
    unless_concepts: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    with_states: tuple[str, ...] = ()
    unless_states: tuple[str, ...] = ()
    risk_factors: tuple[RiskFactorName, ...] = ()
    min_age: AgeDays | None = None
    below_age: AgeDays | None = None
    max_age: AgeDays | None = None
    sex: Literal["female", "male"] | None = None
    no_fever_source: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not (self.concepts or self.states or self.risk_factors or self.no_fever_source):
            raise ValueError("a condition needs concepts, states, risk_factors or no_fever_source")
        return self

    def concept_ids(self) -> set[str]:
        return {*self.concepts, *self.with_concepts, *self.unless_concepts}

    def age_matches(self, days: float) -> bool:
        return within_ages(days, self.min_age, self.below_age, self.max_age)


class Concept(_Table):
    """A clinical concept with the words that express it and the resources it implies."""

    id: str
    label: str
    terms: tuple[str, ...]
    # None: the concept implies nothing about resources (a sign or a modifier);
    # an empty list: it implies that no resources are needed (a refill).
    resources: Resources | None = None
    # Resources for patients under 18 years, where they differ.
    child_resources: Resources | None = None
    # A plausible source of fever (for "fever without a source" in toddlers).
    fever_source: bool = False
    # Counts only when new: "confused at baseline" or "chronic" does not.
    acute_only: bool = False
    # Still true of the patient when written as history ("hx of transplant").
    counts_when_historical: bool = False
    # Mentioning the concept establishes this risk factor.
    risk_factor: RiskFactorName | None = None
    # Words that mean this concept when a side stands right next to them, in
    # any order ("weakness, left arm", "motor weakness rt").
    lateral_terms: tuple[str, ...] = ()
    # Where the concept, its terms and its resources come from, when the file's header does not say.
    source: str = ""
    # Its resources count only when no other concept explains the complaint
    # ("ankle" alone needs an x-ray; "rash on both arms" does not).
    fallback: bool = False


class Rule(_Table):
    """A decision-point rule: when the condition holds, the step answers yes."""

    code: str
    step: Literal["life_saving", "high_risk"]
    finding: str
    source: str
    when: Condition
    # How sure the rule is when it fires; feeds the classification's confidence.
    certainty: float = Field(default=0.85, ge=0, le=1)
    # A judgement call rather than a red flag (ESI.md B: "severe pain ... counts
    # when the presentation is consistent with it"): a learned estimate under
    # the `model` strategy may confirm it or set it aside. A and every red flag
    # (chest pain suspicious for ACS among them) are hard: nothing sets them aside.
    judgement: bool = False

    @model_validator(mode="after")
    def _judgement_only_at_b(self) -> Rule:
        if self.judgement and self.step != "high_risk":
            raise ValueError(f"rule {self.code}: only a high-risk (B) rule can be a judgement call")
        return self


class Floor(_Table):
    """A minimum urgency the review step enforces whatever the steps before said."""

    code: str
    finding: str
    source: str
    when: Condition
    at_least_level: int = Field(ge=1, le=5)


class ResourceModifier(_Table):
    """Extra resources implied by age, sex, vital signs or a combination of concepts."""

    when: Condition
    add: Resources
    reason: str
    source: str


class AgeBand(_Table):
    """Thresholds that apply to one age band."""

    min_age: AgeDays = 0.0
    below_age: AgeDays | None = None
    max_age: AgeDays | None = None

    def contains(self, days: float) -> bool:
        return within_ages(days, self.min_age, self.below_age, self.max_age)


class DangerZoneBand(AgeBand):
    """ESI.md decision point D: heart and respiratory rate limits by age."""

    heart_rate_above: float
    respiratory_rate_above: float


class HypotensionBand(AgeBand):
    """Systolic pressure below which a patient of this age is hypotensive (PALS)."""

    systolic_below: float
    plus_per_year_of_age: float = 0.0


class HeartRateBand(AgeBand):
    """Heart rates that are extreme for the age: severe bradycardia and tachycardia."""

    bradycardia_below: float
    tachycardia_at_or_above: float


class VitalThresholds(_Table):
    """The single-number thresholds of vitals.toml."""

    source: str
    spo2_life_saving_below: float
    spo2_danger_zone_below: float
    spo2_low_below: float
    respiratory_rate_life_saving_below: float
    fever_at_or_above_c: float
    high_fever_above_c: float
    hypothermia_below_c: float
    infant_hypothermia_below_c: float
    gcs_unresponsive_at_or_below: int
    severe_hypertension_systolic_at_or_above: float
    severe_hypertension_diastolic_at_or_above: float
    extreme_hypertension_systolic_at_or_above: float
    extreme_hypertension_diastolic_at_or_above: float
    hypertension_min_age: AgeDays
    severe_pain_at_or_above: int
    parenteral_analgesia_pain_at_or_above: int
    near_threshold_fraction: float
    danger_zone: tuple[DangerZoneBand, ...]
    hypotension: tuple[HypotensionBand, ...]
    profound_hypotension_margin_mmhg: float
    heart_rate: tuple[HeartRateBand, ...]


class NumericFinding(_Table):
    """A number after a label in the text ("sugar 28") that means a concept."""

    concept: str
    labels: tuple[str, ...]
    below: float | None = None
    at_or_above: float | None = None
    source: str

    def holds(self, value: float) -> bool:
        return (self.below is not None and value < self.below) or (
            self.at_or_above is not None and value >= self.at_or_above
        )


class Lexicon(_Table):
    """Language tables: how nurses write, independent of any clinical meaning."""

    abbreviations: dict[str, str]
    spelling: dict[str, str]
    negation_before: tuple[str, ...]
    negation_after: tuple[str, ...]
    historical_before: tuple[str, ...]
    chronic_before: tuple[str, ...]
    chronic_after: tuple[str, ...]
    pseudo_negation: tuple[str, ...]
    scope_terminators: tuple[str, ...]
    transparent_words: tuple[str, ...]
    # Sides ("left", "right"): invisible to phrases, but they make a deficit focal.
    side_words: tuple[str, ...]
    # Words that do not count between the words of a term written out of order.
    filler_words: tuple[str, ...]
    list_connectors: tuple[str, ...]
    common_words: tuple[str, ...]
    numeric: tuple[NumericFinding, ...] = ()


class ResourceTables(_Table):
    """Resource modifiers and the profile used for complaints the lexicon does not know."""

    unrecognized: Resources
    unrecognized_reason: str
    modifier: tuple[ResourceModifier, ...]


@dataclass(frozen=True)
class Tables:
    """Every clinical table, cross-checked, with a version that names its content."""

    version: str
    lexicon: Lexicon
    concepts: dict[str, Concept]
    rules: tuple[Rule, ...]
    floors: tuple[Floor, ...]
    resources: ResourceTables
    vitals: VitalThresholds

    def check(self) -> None:
        """Fails when a table names a concept or state that does not exist.

        Terms claimed by two concepts are caught by the text analyzer, which
        compares them after normalization.
        """
        from server.esi.vitals import STATE_CODES

        conditions: list[tuple[str, Condition]] = [
            *((f"rule {r.code}", r.when) for r in self.rules),
            *((f"floor {f.code}", f.when) for f in self.floors),
            *((f"resource modifier {m.reason!r}", m.when) for m in self.resources.modifier),
        ]
        for where, condition in conditions:
            unknown = condition.concept_ids() - self.concepts.keys()
            if unknown:
                raise ValueError(f"{where} names unknown concepts {sorted(unknown)}")
            bad_states = {*condition.states, *condition.with_states, *condition.unless_states} - STATE_CODES
            if bad_states:
                raise ValueError(f"{where} names unknown vital states {sorted(bad_states)}")
        for numeric in self.lexicon.numeric:
            if numeric.concept not in self.concepts:
                raise ValueError(f"numeric finding names unknown concept {numeric.concept!r}")


def _read(name: str) -> tuple[dict[str, object], bytes]:
    raw = (resources.files("server.esi") / "data" / name).read_bytes()
    return tomllib.loads(raw.decode()), raw


@cache
def load_tables() -> Tables:
    """Loads and checks the packaged tables once per process."""
    docs: dict[str, dict[str, object]] = {}
    digest = hashlib.sha256()
    for name in _DATA_FILES:
        docs[name], raw = _read(name)
        digest.update(raw)
    rules_doc = docs["rules.toml"]
    concepts = [Concept.model_validate(c) for c in _list(docs["concepts.toml"], "concept")]
    tables = Tables(
        version=f"{rules_doc['ruleset']}+{digest.hexdigest()[:8]}",
        lexicon=Lexicon.model_validate(docs["lexicon.toml"]),
        concepts={c.id: c for c in concepts},
        rules=tuple(Rule.model_validate(r) for r in _list(rules_doc, "rule")),
        floors=tuple(Floor.model_validate(f) for f in _list(rules_doc, "floor")),
        resources=ResourceTables.model_validate(docs["resources.toml"]),
        vitals=VitalThresholds.model_validate(docs["vitals.toml"]),
    )
    if len(tables.concepts) != len(concepts):
        raise ValueError("concepts.toml has duplicate concept ids")
    tables.check()
    return tables


def _list(doc: dict[str, object], key: str) -> Sequence[object]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} must be an array of tables")
    return value
