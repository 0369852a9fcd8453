"""The pipeline's domain types: a validated case in, step results and a result out.

They are plain frozen dataclasses so that the engine and its tests need no
protobuf. Enumerations reuse the generated proto enum values, the contract's
single source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from triage.v1 import case_pb2, classification_pb2

Step: TypeAlias = classification_pb2.Step.ValueType
ResourceKind: TypeAlias = classification_pb2.ResourceKind.ValueType
RiskFactor: TypeAlias = case_pb2.RiskFactor.ValueType

STEP_LIFE_SAVING = classification_pb2.STEP_LIFE_SAVING
STEP_HIGH_RISK = classification_pb2.STEP_HIGH_RISK
STEP_RESOURCES = classification_pb2.STEP_RESOURCES
STEP_DANGER_ZONE_VITALS = classification_pb2.STEP_DANGER_ZONE_VITALS
STEP_REVIEW = classification_pb2.STEP_REVIEW
STEP_NARRATIVE = classification_pb2.STEP_NARRATIVE

STEP_LETTERS: dict[Step, str] = {
    STEP_LIFE_SAVING: "A",
    STEP_HIGH_RISK: "B",
    STEP_RESOURCES: "C",
    STEP_DANGER_ZONE_VITALS: "D",
    STEP_REVIEW: "E",
    STEP_NARRATIVE: "narrative",
}


@dataclass(frozen=True, slots=True)
class Age:
    """An age in days (for thresholds) and as the caller gave it (for findings)."""

    days: float
    text: str


@dataclass(frozen=True, slots=True)
class Vitals:
    """Vital signs; None means not measured."""

    heart_rate_bpm: float | None = None
    respiratory_rate_per_min: float | None = None
    spo2_percent: float | None = None
    systolic_bp_mmhg: float | None = None
    diastolic_bp_mmhg: float | None = None
    temperature_c: float | None = None
    pain_score: int | None = None
    gcs: int | None = None


@dataclass(frozen=True, slots=True)
class Case:
    """A validated triage case."""

    age: Age
    chief_complaint: str
    history: str = ""
    sex: case_pb2.Sex.ValueType = case_pb2.SEX_UNSPECIFIED
    vitals: Vitals = field(default_factory=Vitals)
    avpu: case_pb2.Avpu.ValueType = case_pb2.AVPU_UNSPECIFIED
    acute_mental_status_change: bool = False
    arrival_mode: case_pb2.ArrivalMode.ValueType = case_pb2.ARRIVAL_MODE_UNSPECIFIED
    risk_factors: frozenset[RiskFactor] = frozenset()
    case_ref: str = ""


@dataclass(frozen=True, slots=True)
class Finding:
    """A fact behind a classification, naming the input it came from."""

    code: str
    text: str
    step: Step
    input_field: str


@dataclass(frozen=True, slots=True)
class PredictedResource:
    """An ESI resource the patient is expected to need, with the reason."""

    kind: ResourceKind
    detail: str
    reason: str
    input_field: str


@dataclass(frozen=True, slots=True)
class Warning:
    """An input that was missing or unusable, and what it prevented."""

    code: str
    input_field: str
    text: str


@dataclass(frozen=True, slots=True)
class Cost:
    """What producing an answer cost in model calls."""

    usd_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.usd_micros + other.usd_micros,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )


@dataclass(slots=True)
class StepResult:
    """One step's answer. Steps C and E fill the fields that only they produce.

    The pipeline stamps `backend` and `elapsed_seconds` when the step returns;
    nothing changes a result after that.
    """

    step: Step
    question: str
    answer: str
    findings: tuple[Finding, ...] = ()
    # The level this step settled, or None when the pipeline goes on.
    level: int | None = None
    # How sure the step is of its answer (0-1); the classification's
    # confidence is the least sure step's.
    certainty: float = 0.9
    warnings: tuple[Warning, ...] = ()
    # Step C: the predicted resources and their ESI count.
    resources: tuple[PredictedResource, ...] = ()
    resource_count: int = 0
    # Step E: the summary.
    rationale: str = ""
    backend: str = "rules"
    elapsed_seconds: float = 0.0
    cost: Cost = Cost()


@dataclass(frozen=True, slots=True)
class TriageResult:
    """The pipeline's answer for one case, before it gets an id and a time.

    Build it with `from_steps`: the totals over the steps are worked out once,
    because the audit record and the response both read them.
    """

    esi_level: int
    confidence: float
    decided_at: Step
    steps: tuple[StepResult, ...]
    rationale: str
    ruleset_version: str
    findings: tuple[Finding, ...]
    warnings: tuple[Warning, ...]
    resources: tuple[PredictedResource, ...]
    resource_count: int
    cost: Cost

    @classmethod
    def from_steps(
        cls,
        steps: tuple[StepResult, ...],
        *,
        esi_level: int,
        confidence: float,
        decided_at: Step,
        rationale: str,
        ruleset_version: str,
    ) -> TriageResult:
        warnings: dict[tuple[str, str], Warning] = {}
        cost = Cost()
        for step in steps:
            for warning in step.warnings:
                warnings.setdefault((warning.code, warning.input_field), warning)
            cost = cost + step.cost
        resources_step = next((s for s in steps if s.step == STEP_RESOURCES), None)
        return cls(
            esi_level=esi_level,
            confidence=confidence,
            decided_at=decided_at,
            steps=steps,
            rationale=rationale,
            ruleset_version=ruleset_version,
            findings=tuple(f for s in steps for f in s.findings),
            warnings=tuple(warnings.values()),
            resources=resources_step.resources if resources_step else (),
            resource_count=resources_step.resource_count if resources_step else 0,
            cost=cost,
        )
