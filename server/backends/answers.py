"""What every model question shares: the system prompt, the case as text, the question's shape.

Each step that asks a model (server/steps/high_risk.py, resources.py) gives a
ModelQuestion: its prompt and its answer type, a pydantic model whose JSON
schema goes to the model as a `json_schema` response format (strict) and
against which the reply is validated; a reply that does not validate is
discarded and the rules' answer stands. The prompts restate ESI v4's decision
points (ESI.md); they are instructions, not clinical rules: the rules engine
still sets the floor. The narrative's prompt is here (it is no decision point).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from server.domain import Case
from triage.v1 import case_pb2

Answer = TypeVar("Answer", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ModelQuestion(Generic[Answer]):
    """What a step asks a model: the question's name (the JSON schema's), its prompt, its answer's type.

    Each decision point that asks a model defines its own (server/steps); the
    backends only send it.
    """

    name: str
    prompt: str
    answer_type: type[Answer]
    # The request's response_format, made once: a JSON schema costs more to generate than the rest of a request.
    response_format: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema = {"name": self.name, "schema": self.answer_type.model_json_schema(), "strict": True}
        object.__setattr__(self, "response_format", {"type": "json_schema", "json_schema": schema})


SYSTEM_PROMPT = (
    "You assist an emergency-department triage nurse using the Emergency Severity Index, version 4. "
    "Answer only the question asked, in the JSON format required. The nurse decides; you advise."
)

NARRATIVE_PROMPT = (
    "Explain to the triage nurse, in three to five plain sentences, the reasoning for the suggested ESI level "
    "below. Do not change the level."
)

_VITALS = (
    ("heart_rate_bpm", "heart rate", "/min"),
    ("respiratory_rate_per_min", "respiratory rate", "/min"),
    ("spo2_percent", "SpO2", " %"),
    ("systolic_bp_mmhg", "systolic BP", " mmHg"),
    ("diastolic_bp_mmhg", "diastolic BP", " mmHg"),
    ("temperature_c", "temperature", " C"),
    ("pain_score", "pain", "/10"),
    ("gcs", "GCS", ""),
)


def describe_case(case: Case) -> str:
    """The case as the model reads it. It is sent to the model and nowhere else."""
    lines = [f"Age: {case.age.text}"]
    if case.sex != case_pb2.SEX_UNSPECIFIED:
        lines.append(f"Sex: {case_pb2.Sex.Name(case.sex).removeprefix('SEX_').lower()}")
    lines.append(f"Chief complaint: {case.chief_complaint}")
    if case.history:
        lines.append(f"Triage note: {case.history}")
    measured = [
        f"{label} {value:g}{unit}" for name, label, unit in _VITALS if (value := getattr(case.vitals, name)) is not None
    ]
    if measured:
        lines.append("Vital signs: " + ", ".join(measured))
    if case.avpu != case_pb2.AVPU_UNSPECIFIED:
        lines.append(f"AVPU: {case_pb2.Avpu.Name(case.avpu).removeprefix('AVPU_').lower()}")
    if case.acute_mental_status_change:
        lines.append("Acute change in mental status: yes")
    if case.arrival_mode != case_pb2.ARRIVAL_MODE_UNSPECIFIED:
        lines.append(f"Arrival: {case_pb2.ArrivalMode.Name(case.arrival_mode).removeprefix('ARRIVAL_MODE_').lower()}")
    if case.risk_factors:
        names = sorted(case_pb2.RiskFactor.Name(r).removeprefix("RISK_FACTOR_").lower() for r in case.risk_factors)
        lines.append("Risk factors: " + ", ".join(names))
    return "\n".join(lines)
