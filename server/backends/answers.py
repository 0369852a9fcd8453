"""What a model is asked for each step, and the shape its answer must have.

The answers are pydantic models: their JSON schema goes to the model as a
`json_schema` response format (strict), and the reply is validated against
them; a reply that does not validate is discarded and the rules' answer
stands. The prompts restate ESI v4's decision points (ESI.md); they are
instructions, not clinical rules: the rules engine still sets the floor.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.pipeline.model import Case
from triage.v1 import case_pb2

ResourceName = Literal[
    "labs",
    "ecg",
    "xray",
    "advanced_imaging",
    "iv_fluids",
    "parenteral_medication",
    "specialty_consultation",
    "simple_procedure",
    "complex_procedure",
]


class HighRiskAnswer(BaseModel):
    """Decision point B."""

    model_config = ConfigDict(extra="forbid")

    high_risk: bool = Field(description="true if the patient should not wait: ESI 2")
    reasons: list[str] = Field(max_length=5, description="short clinical reasons, each under 200 characters")


class Resource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ResourceName
    reason: str = Field(max_length=300)


class ResourcesAnswer(BaseModel):
    """Decision point C."""

    model_config = ConfigDict(extra="forbid")

    resources: list[Resource] = Field(max_length=9, description="distinct ESI resource types the patient will need")


SYSTEM_PROMPT = (
    "You assist an emergency-department triage nurse using the Emergency Severity Index, version 4. "
    "Answer only the question asked, in the JSON format required. The nurse decides; you advise."
)

QUESTIONS = {
    "high_risk": (
        "ESI decision point B: is this a high-risk situation, new confusion, lethargy or disorientation, or "
        "severe pain or distress, so that the patient should not wait (ESI 2)? Answer high_risk and give the "
        "reasons."
    ),
    "resources": (
        "ESI decision point C: which different resource types will this patient need in the ED? Count types, "
        "not tests: labs (blood or urine), ecg, xray, advanced_imaging (CT, MRI, ultrasound), iv_fluids, "
        "parenteral_medication (IV, IM or nebulized), specialty_consultation, simple_procedure (e.g. laceration "
        "repair, urinary catheter), complex_procedure (e.g. procedural sedation). History and physical "
        "examination, oral medications, prescriptions and simple wound care are not resources."
    ),
    "narrative": (
        "Explain to the triage nurse, in three to five plain sentences, the reasoning for the suggested ESI level "
        "below. Do not change the level."
    ),
}

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
