"""The domain types, the bottom layer: a validated case in, step results and a result out.

They are plain dataclasses so that the engine and its tests need no protobuf
messages. Enumerations reuse the generated proto enum values, the contract's
single source of truth. Also here: who is calling (Principal), what a run may
spend and how long it has (RunContext), and the domain errors. Nothing here
knows gRPC: the transport layer builds a RunContext from the call and maps
DomainError to a status code (server/errors.py, interceptors/errors.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, TypeAlias

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


# The built-in backends' names, in the runtime configuration and in step results:
# the rules engine, and the learned estimates (server/learned: free, offline, for B, C and D).
RULES = "rules"
LEARNED = "learned"

# D's policy in the rules engine: up-triage to ESI 2, or flag the vital signs and keep ESI 3.
DangerZonePolicy = Literal["up_triage", "flag_only"]


class Role(StrEnum):
    """What a caller may do; named as in the contract's `Role` enum."""

    DEMO = "demo"
    CLINICIAN = "clinician"
    SERVICE = "service"
    ADMIN = "admin"
    # A web tier calling for end users: trusted to forward each one's address, limited per end user.
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `subject` is what rate limits and usage are counted against: an API key's
    id, an OIDC issuer and subject, or an anonymous caller's address. It is
    never a secret.
    """

    subject: str
    # None: a genuine identity that holds none of our roles (an OIDC token without the claim).
    role: Role | None
    key_id: str = ""
    # The caller's own rate limit ("10/second;1000/hour"); empty means the role's default.
    rate_limit: str = ""
    # The caller's own monthly model budget (0: none), and whether spending it refuses calls.
    monthly_budget_usd_micros: int = 0
    refuse_over_budget: bool = False

    @property
    def account(self) -> str:
        """What audit records, usage and budgets are kept under: the key id, else the subject."""
        return self.key_id or self.subject


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One model call's use: the step, the backend, tokens and cost."""

    step: int
    backend: str
    input_tokens: int
    output_tokens: int
    usd_micros: int


@dataclass(slots=True)
class RunContext:
    """What a run through the pipeline gets from its caller: time, identity, a cost ledger.

    The transport layer builds it from the call (server/calls.py,
    CallState.run_context); without a call (tests, the evaluator) it is empty:
    no deadline, no principal, a ledger no one reads.
    """

    # time.monotonic() by which the run must finish; None means no deadline.
    deadline: float | None = None
    principal: Principal | None = None
    # What the run's model calls used, as they used it (shared with the call, which settles it).
    ledger: list[LedgerEntry] = field(default_factory=list)

    def remaining_seconds(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        """Raises DeadlineExceeded once the run's time is up; called between units of work."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the deadline expired before the classification was finished")


class DomainError(Exception):
    """An error the domain raises for its caller; the transport maps it to a status code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DeadlineExceeded(DomainError):
    """The run's deadline passed before it was finished."""


class BudgetExhausted(DomainError):
    """A model budget is spent and the caller asked to be refused rather than fall back."""

    def __init__(self, message: str, *, subject: str, description: str) -> None:
        super().__init__(message)
        self.subject = subject
        self.description = description
