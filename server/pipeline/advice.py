"""A model's advice on decision points B and C, combined with the rules' answer.

The rules always answer first and set the floor (DESIGN.md, ESI.md "safety
first"). Per step, the configured strategy decides what the model may change:

- `rules`: the model is not asked.
- `most_urgent`: the more urgent of the two answers.
- `model`: the model's answer, but never below a hard rule. At B every rules
  "yes" is a hard rule, so at B this is the same as most_urgent; at C the
  resource count is an estimate, not a rule, so the model's count stands.

Whatever the model does (time out, fail, answer nonsense, or not be asked
because its circuit is open or the budget is spent) the rules' answer stands,
inside the caller's deadline, and a finding or warning says so.
"""

from __future__ import annotations

import dataclasses

from server.backends.answers import HighRiskAnswer, ResourcesAnswer
from server.backends.openai_compatible import ModelUnavailable, Reply
from server.backends.registry import BackendRegistry
from server.calls import current_call
from server.esi.tables import RESOURCE_LABELS
from server.pipeline.model import (
    STEP_HIGH_RISK,
    STEP_RESOURCES,
    Case,
    Cost,
    Finding,
    PredictedResource,
    Step,
    StepResult,
    Warning,
)
from server.runtime_config import RULES, RuntimeConfig, StepPolicy
from triage.v1 import classification_pb2

# Time kept back from the caller's deadline for the rules fallback, the audit and the answer.
RESERVE_SECONDS = 0.25
_COMPLEX_WEIGHT = 2
_MODEL_CERTAINTY = 0.7


class Advisor:
    """Asks the configured model about B and C and combines its answer with the rules'."""

    def __init__(self, registry: BackendRegistry, *, max_seconds: float) -> None:
        self.registry = registry
        self._max_seconds = max_seconds

    def policy(self, step: Step, config: RuntimeConfig) -> StepPolicy | None:
        """The step's policy when a model is to be asked, else None."""
        policy = {STEP_HIGH_RISK: config.high_risk, STEP_RESOURCES: config.resources}.get(step)
        if policy is None or policy.backend == RULES or policy.strategy == "rules":
            return None
        return policy

    def seconds(self) -> float:
        """How long a model may take: what the caller has left, less the reserve."""
        call = current_call()
        remaining = call.remaining_seconds() if call is not None else None
        if remaining is None:
            return self._max_seconds
        return max(0.0, min(self._max_seconds, remaining - RESERVE_SECONDS))

    async def advise(self, rules: StepResult, case: Case, policy: StepPolicy, config: RuntimeConfig) -> StepResult:
        """The step's result after asking the model; the rules' result when it cannot help."""
        backend = self.registry.model(policy.backend)
        price = config.price(policy.backend)
        reply: Reply[HighRiskAnswer] | Reply[ResourcesAnswer]
        try:
            if rules.step == STEP_HIGH_RISK:
                reply = await backend.ask("high_risk", case, HighRiskAnswer, seconds=self.seconds())
            else:
                reply = await backend.ask("resources", case, ResourcesAnswer, seconds=self.seconds())
        except ModelUnavailable as unavailable:
            return fallback(rules, backend.name, unavailable.reason)
        usage = reply.usage
        cost = Cost(
            price.cost_usd_micros(usage.input_tokens, usage.output_tokens) if price is not None else 0,
            usage.input_tokens,
            usage.output_tokens,
        )
        if reply.answer is None:
            warning = Warning(
                "model_invalid_answer",
                "",
                f"{backend.name} answered in the wrong format; its answer was discarded and the rules' stands",
            )
            return dataclasses.replace(rules, warnings=(*rules.warnings, warning), cost=cost)
        if isinstance(reply.answer, HighRiskAnswer):
            combined = combine_high_risk(rules, reply.answer, backend.name)
        else:
            combined = combine_resources(rules, reply.answer, backend.name, policy.strategy)
        return dataclasses.replace(combined, cost=cost)


def fallback(rules: StepResult, backend: str, reason: str) -> StepResult:
    """The rules' result, saying that the model was not heard and why."""
    finding = Finding(
        code="model.fallback",
        text=f"{backend} gave no answer ({reason}); the rules' answer stands",
        step=rules.step,
        input_field="",
    )
    return dataclasses.replace(rules, findings=(*rules.findings, finding))


def combine_high_risk(rules: StepResult, answer: HighRiskAnswer, backend: str) -> StepResult:
    """Decision point B: high risk if the rules or the model say so; a rules "yes" is never undone."""
    reasons = answer.reasons or ["judged high risk"]
    advice = tuple(
        Finding(code="model.high_risk", text=f"{backend}: {reason}", step=STEP_HIGH_RISK, input_field="")
        for reason in reasons
    )
    if not answer.high_risk:
        return dataclasses.replace(rules, backend=f"{rules.backend}+{backend}")
    if rules.level is not None:
        return dataclasses.replace(rules, findings=(*rules.findings, *advice), backend=f"{rules.backend}+{backend}")
    return dataclasses.replace(
        rules,
        answer="yes: ESI 2 (model)",
        findings=advice,
        level=2,
        certainty=_MODEL_CERTAINTY,
        backend=backend,
    )


def combine_resources(rules: StepResult, answer: ResourcesAnswer, backend: str, strategy: str) -> StepResult:
    """Decision point C: the model's count (strategy model), or the larger count (most_urgent)."""
    predicted: dict[int, PredictedResource] = {}
    for item in answer.resources:
        kind = classification_pb2.ResourceKind.Value(f"RESOURCE_KIND_{item.kind.upper()}")
        predicted.setdefault(kind, PredictedResource(kind, RESOURCE_LABELS[kind], f"{backend}: {item.reason}", ""))
    resources = tuple(sorted(predicted.values(), key=lambda r: r.kind))
    count = sum(
        _COMPLEX_WEIGHT if r.kind == classification_pb2.RESOURCE_KIND_COMPLEX_PROCEDURE else 1 for r in resources
    )
    names = ", ".join(RESOURCE_LABELS[r.kind] for r in resources) or "none"
    summary = f"{backend} predicted {count} resource{'s' if count != 1 else ''}: {names}"
    if strategy == "most_urgent" and count <= rules.resource_count:
        note = Finding("model.resources", f"{summary}; the rules' {rules.resource_count} stand", STEP_RESOURCES, "")
        return dataclasses.replace(rules, findings=(*rules.findings, note), backend=f"{rules.backend}+{backend}")
    return dataclasses.replace(
        rules,
        answer=f"{count} resource{'s' if count != 1 else ''} ({names}; model)",
        findings=(Finding("resources.count", summary, STEP_RESOURCES, ""),),
        level=5 if count == 0 else 4 if count == 1 else None,
        certainty=min(rules.certainty, _MODEL_CERTAINTY),
        resources=resources,
        resource_count=count,
        backend=backend,
    )
