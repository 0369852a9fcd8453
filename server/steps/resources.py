"""Decision point C: how many different resources will the patient need? None: ESI 5, one: ESI 4, more: D.

The rules predict the resources; a learned estimate (server/learned) or a
model may then change the count under the step's strategy
(RuntimeConfig.resources):

- model, `model`: the model's count (the rules' count is an estimate, not a
  rule); `most_urgent`: the larger count.
- learned, `model`: the estimated count (0 / 1 / 2 or more) sets the level;
  the rules' resource list stays as what the nurse can check. `most_urgent`:
  the larger of the two counts. A complaint nothing recognised, or a
  concept too rare in the training visits to be learned, keeps the rules'
  work-up as the least.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.backends.answers import ModelQuestion
from server.domain import LEARNED, STEP_RESOURCES, Finding, PredictedResource, StepResult
from server.esi.engine import UNRECOGNIZED_COMPLAINT, RulesEngine, resource_count, resources_level
from server.esi.tables import RESOURCE_LABELS
from server.learned.features import input_field, label
from server.learned.policy import LEARNED_CERTAINTY, LearnedSteps
from server.runtime_config import Strategy
from server.steps.base import MODEL_CERTAINTY, DecisionPoint, TriageRun, strongest_input
from triage.v1 import classification_pb2

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


_PROCEDURES = frozenset(
    {classification_pb2.RESOURCE_KIND_SIMPLE_PROCEDURE, classification_pb2.RESOURCE_KIND_COMPLEX_PROCEDURE}
)


class Resource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ResourceName
    reason: str = Field(max_length=300)


class ResourcesAnswer(BaseModel):
    """Decision point C."""

    model_config = ConfigDict(extra="forbid")

    resources: list[Resource] = Field(max_length=9, description="distinct ESI resource types the patient will need")


MODEL_QUESTION = ModelQuestion(
    "resources",
    "ESI decision point C: which different resource types will this patient need in the ED? Count types, "
    "not tests: labs (blood or urine), ecg, xray, advanced_imaging (CT, MRI, ultrasound), iv_fluids, "
    "parenteral_medication (IV, IM or nebulized), specialty_consultation, simple_procedure (e.g. laceration "
    "repair, urinary catheter), complex_procedure (e.g. procedural sedation). History and physical "
    "examination, oral medications, prescriptions and simple wound care are not resources.",
    ResourcesAnswer,
)


class Resources(DecisionPoint):
    step = STEP_RESOURCES
    question = "How many different resources will the patient need?"
    config_field = "resources"
    model_question = MODEL_QUESTION

    def rules(self, engine: RulesEngine, run: TriageRun) -> StepResult:
        return engine.resources(run.facts, self.question)

    def with_learned(self, rules: StepResult, run: TriageRun, learned: LearnedSteps, strategy: Strategy) -> StepResult:
        """C with the estimated number of resources."""
        estimate = run.estimated(learned).resources
        count = estimate.count
        unrecognized = any(w.code == UNRECOGNIZED_COMPLAINT for w in rules.warnings)
        procedure = any(r.kind in _PROCEDURES for r in rules.resources)
        danger_zone = any(state.startswith("danger_zone_") for state in run.facts.states)
        if strategy == "most_urgent" or unrecognized or procedure or danger_zone or estimate.unlearned:
            # A complaint nothing recognised is never low acuity by default: the
            # rules' assumed work-up stands, and B and D rest on the estimate.
            # A procedure the complaint calls for (a repair, a reduction) is not
            # a guess either, and a vital sign in the danger zone must reach D;
            # nor may an estimate cut the work-up of a concept it never learned
            # (NHAMCS codes no hypoglycemia, fall or transfer, say).
            # There the estimate may add to the rules' count, not cut it.
            count = max(count, min(rules.resource_count, 2))
        text, source = estimate.text, strongest_input(estimate, run)
        if estimate.unlearned:
            names = ", ".join(label(feature, run.facts) for feature in estimate.unlearned)
            text = f"{text}; not learned from the training visits: {names}, so the rules' work-up is the least"
            source = input_field(estimate.unlearned[0], run.facts)
        if count == min(rules.resource_count, 2):
            note = Finding("learned.resources", text, STEP_RESOURCES, source)
            return dataclasses.replace(rules, findings=(*rules.findings, note), backend=f"{rules.backend}+{LEARNED}")
        words = ("none", "one", "two or more")[count]
        return dataclasses.replace(
            rules,
            answer=f"{words} ({estimate.text})",
            findings=(
                Finding("resources.count", text, STEP_RESOURCES, source),
                *(dataclasses.replace(f, code="resources.rules_count") for f in rules.findings),
            ),
            level=resources_level(count),
            certainty=min(rules.certainty, LEARNED_CERTAINTY),
            resource_count=count,
            backend=f"{rules.backend}+{LEARNED}",
        )

    def with_model(self, rules: StepResult, answer: ResourcesAnswer, backend: str, strategy: Strategy) -> StepResult:
        """The model's count (strategy model), or the larger count (most_urgent)."""
        predicted: dict[int, PredictedResource] = {}
        for item in answer.resources:
            kind = classification_pb2.ResourceKind.Value(f"RESOURCE_KIND_{item.kind.upper()}")
            predicted.setdefault(kind, PredictedResource(kind, RESOURCE_LABELS[kind], f"{backend}: {item.reason}", ""))
        resources = tuple(sorted(predicted.values(), key=lambda r: r.kind))
        count = resource_count(resources)
        names = ", ".join(RESOURCE_LABELS[r.kind] for r in resources) or "none"
        summary = f"{backend} predicted {count} resource{'s' if count != 1 else ''}: {names}"
        if strategy == "most_urgent" and count <= rules.resource_count:
            note = Finding("model.resources", f"{summary}; the rules' {rules.resource_count} stand", STEP_RESOURCES, "")
            return dataclasses.replace(rules, findings=(*rules.findings, note), backend=f"{rules.backend}+{backend}")
        return dataclasses.replace(
            rules,
            answer=f"{count} resource{'s' if count != 1 else ''} ({names}; model)",
            findings=(Finding("resources.count", summary, STEP_RESOURCES, ""),),
            level=resources_level(count),
            certainty=min(rules.certainty, MODEL_CERTAINTY),
            resources=resources,
            resource_count=count,
            backend=backend,
        )


RESOURCES = Resources()
