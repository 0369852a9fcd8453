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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from server.backends.answers import HighRiskAnswer, ResourcesAnswer, describe_case
from server.backends.openai_compatible import ModelUnavailable, Reply, Usage
from server.backends.registry import BackendRegistry
from server.budgets import Budgets, OverBudget
from server.calls import LedgerEntry, current_call
from server.errors import ResourceExhausted
from server.esi.engine import COMPLEX_PROCEDURE_WEIGHT
from server.esi.tables import RESOURCE_LABELS
from server.pipeline.model import (
    STEP_HIGH_RISK,
    STEP_NARRATIVE,
    STEP_RESOURCES,
    Case,
    Cost,
    Finding,
    PredictedResource,
    Step,
    StepResult,
    Warning,
)
from server.runtime_config import LEARNED, RULES, Price, RuntimeConfig, StepPolicy
from triage.v1 import classification_pb2

# Time kept back from the caller's deadline for the rules fallback, the audit and the answer.
RESERVE_SECONDS = 0.25
_MODEL_CERTAINTY = 0.7
FREE = Price(input_usd_micros_per_million_tokens=0, output_usd_micros_per_million_tokens=0)


class Advisor:
    """Asks the configured model about B and C and combines its answer with the rules'."""

    def __init__(self, registry: BackendRegistry, budgets: Budgets, *, max_seconds: float) -> None:
        self.registry = registry
        self.budgets = budgets
        self._max_seconds = max_seconds

    def policy(self, step: Step, config: RuntimeConfig) -> StepPolicy | None:
        """The step's policy when a model is to be asked, else None."""
        if step == STEP_HIGH_RISK:
            policy = config.high_risk
        elif step == STEP_RESOURCES:
            policy = config.resources
        else:
            return None
        if policy.backend in (RULES, LEARNED) or policy.strategy == "rules":
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
        """The step's result after asking the model; the rules' result when it cannot help.

        The call's worst-case cost is reserved against the budgets first and
        settled after, also when the caller cancels mid-call (then at the worst
        case: the provider bills what it has started).
        """
        backend = self.registry.model(policy.backend)
        question = "high_risk" if rules.step == STEP_HIGH_RISK else "resources"
        price = config.price(policy.backend) or FREE
        call = current_call()
        principal = call.principal if call is not None else None
        input_at_most = backend.input_tokens_at_most(question, describe_case(case))
        worst = price.cost_usd_micros(input_at_most, backend.max_output_tokens)
        reservation = None
        if worst > 0:  # free backends are never held back by a budget
            try:
                reservation = self.budgets.reserve(principal, worst)
            except OverBudget as over:
                if principal is not None and principal.refuse_over_budget:
                    raise ResourceExhausted(
                        f"the {over.scope} model budget for this month is spent",
                        subject=principal.account if over.scope == "key" else "global",
                        description=f"{over.scope} monthly model budget",
                        retry_after=None,
                    ) from None
                return fallback(rules, backend.name, f"the {over.scope} budget is spent")
        used = Cost(worst, input_at_most, backend.max_output_tokens)
        try:
            reply: Reply[HighRiskAnswer] | Reply[ResourcesAnswer]
            if question == "high_risk":
                reply = await backend.ask(question, case, HighRiskAnswer, seconds=self.seconds())
            else:
                reply = await backend.ask(question, case, ResourcesAnswer, seconds=self.seconds())
            usage = reply.usage
            used = Cost(
                price.cost_usd_micros(usage.input_tokens, usage.output_tokens), usage.input_tokens, usage.output_tokens
            )
        except ModelUnavailable as unavailable:
            used = Cost()  # no answer, no tokens billed
            return fallback(rules, backend.name, unavailable.reason)
        finally:
            if reservation is not None:
                self.budgets.settle(reservation, used.usd_micros, principal)
            if call is not None and used != Cost():
                call.ledger.append(
                    LedgerEntry(rules.step, backend.name, used.input_tokens, used.output_tokens, used.usd_micros)
                )
        if reply.answer is None:
            warning = Warning(
                "model_invalid_answer",
                "",
                f"{backend.name} answered in the wrong format; its answer was discarded and the rules' stands",
            )
            return dataclasses.replace(rules, warnings=(*rules.warnings, warning), cost=used)
        if isinstance(reply.answer, HighRiskAnswer):
            combined = combine_high_risk(rules, reply.answer, backend.name)
        else:
            combined = combine_resources(rules, reply.answer, backend.name, policy.strategy)
        return dataclasses.replace(combined, cost=used)

    async def narrate(
        self, case: Case, summary: str, config: RuntimeConfig, narration: Narration
    ) -> AsyncIterator[str]:
        """Streams the configured model's narrative of `summary`; nothing when none is configured.

        What it cost, and a warning if it broke off, are left in `narration`.
        A caller that cancels mid-stream is charged what it received.
        """
        name = config.narrative.backend
        if name == RULES:
            return
        backend = self.registry.model(name)
        price = config.price(name) or FREE
        call = current_call()
        principal = call.principal if call is not None else None
        content = f"{describe_case(case)}\n\nSuggested level and reasons:\n{summary}"
        input_at_most = backend.input_tokens_at_most("narrative", content)
        worst = price.cost_usd_micros(input_at_most, backend.max_output_tokens)
        reservation = None
        if worst > 0:
            try:
                reservation = self.budgets.reserve(principal, worst)
            except OverBudget as over:
                narration.warning = Warning(
                    "narrative_unavailable", "", f"no narrative: the {over.scope} budget is spent"
                )
                return
        received = 0
        usage: Usage | None = None
        try:
            async for item in backend.narrate(case, summary, seconds=self.seconds()):
                if isinstance(item, Usage):
                    usage = item
                else:
                    received += len(item)
                    yield item
        except ModelUnavailable as unavailable:
            narration.warning = Warning("narrative_unavailable", "", f"the narrative broke off ({unavailable.reason})")
        finally:
            if usage is None or usage == Usage():
                # Cut short before the provider reported usage: count what was sent and received.
                usage = Usage(input_at_most if received else 0, received // 3)
            cost = Cost(
                price.cost_usd_micros(usage.input_tokens, usage.output_tokens), usage.input_tokens, usage.output_tokens
            )
            narration.cost = cost
            if reservation is not None:
                self.budgets.settle(reservation, cost.usd_micros, principal)
            if call is not None and cost != Cost():
                call.ledger.append(
                    LedgerEntry(STEP_NARRATIVE, name, usage.input_tokens, usage.output_tokens, cost.usd_micros)
                )


@dataclass
class Narration:
    """What a narrative cost, and what went wrong with it, once it has been streamed."""

    cost: Cost = field(default_factory=Cost)
    warning: Warning | None = None


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
        COMPLEX_PROCEDURE_WEIGHT if r.kind == classification_pb2.RESOURCE_KIND_COMPLEX_PROCEDURE else 1
        for r in resources
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
