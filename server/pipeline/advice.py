"""Asking a model about a decision point (B and C), within the caller's time and budget.

The rules always answer first and set the floor (DESIGN.md, ESI.md "safety
first"). Per step, the configured strategy decides what the model may change,
and the step's module (server/steps) says how the answers combine:

- `rules`: the model is not asked.
- `most_urgent`: the more urgent of the two answers.
- `model`: the model's answer, but never below a hard rule. At B every rules
  "yes" is a hard rule, so at B this is the same as most_urgent; at C the
  resource count is an estimate, not a rule, so the model's count stands.

Here: the budget (reserve the worst case, settle the actual), the time left
(from the RunContext the caller passed), the cost ledger, and the fallback.
Whatever the model does (time out, fail, answer nonsense, or not be asked
because its circuit is open or the budget is spent) the rules' answer stands,
inside the caller's deadline, and a finding or warning says so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from server import metrics
from server.backends.answers import NARRATIVE_PROMPT, describe_case
from server.backends.openai_compatible import ModelUnavailable, Usage
from server.backends.registry import BackendRegistry
from server.budgets import Budgets, BudgetUnavailable, OverBudget
from server.domain import (
    STEP_NARRATIVE,
    BudgetExhausted,
    Case,
    Cost,
    Finding,
    LedgerEntry,
    RunContext,
    StepResult,
    Warning,
)
from server.runtime_config import RULES, Price, RuntimeConfig, StepPolicy
from server.steps import DecisionPoint

# Time kept back from the caller's deadline for the rules fallback, the audit and the answer.
RESERVE_SECONDS = 0.25
FREE = Price(input_usd_micros_per_million_tokens=0, output_usd_micros_per_million_tokens=0)


class Advisor:
    """Asks the configured model about B and C and combines its answer with the rules'."""

    def __init__(self, registry: BackendRegistry, budgets: Budgets, *, max_seconds: float) -> None:
        self.registry = registry
        self.budgets = budgets
        self._max_seconds = max_seconds

    def seconds(self, context: RunContext) -> float:
        """How long a model may take: what the caller has left, less the reserve."""
        remaining = context.remaining_seconds()
        if remaining is None:
            return self._max_seconds
        return max(0.0, min(self._max_seconds, remaining - RESERVE_SECONDS))

    async def advise(
        self,
        rules: StepResult,
        case: Case,
        point: DecisionPoint,
        policy: StepPolicy,
        config: RuntimeConfig,
        context: RunContext,
    ) -> StepResult:
        """The step's result after asking the model `point.model_question`; the rules' when it cannot help.

        The call's worst-case cost is reserved against the budgets first and
        settled after, also when the caller cancels mid-call or the model's time
        runs out (then at the worst case: the provider bills what it has started).
        A caller whose key refuses calls over its budget gets BudgetExhausted (a
        domain error).
        """
        question = point.model_question
        if question is None:
            raise ValueError(f"step {point.letter} asks no model")
        backend = self.registry.model(policy.backend)
        price = config.price(policy.backend) or FREE
        principal = context.principal
        input_at_most = backend.input_tokens_at_most(question.prompt, describe_case(case))
        worst = price.cost_usd_micros(input_at_most, backend.max_output_tokens)
        reservation = None
        if worst > 0:  # free backends are never held back by a budget
            try:
                reservation = await self.budgets.reserve(principal, worst, seconds=self.seconds(context))
            except OverBudget as over:
                if principal is not None and principal.refuse_over_budget:
                    metrics.model_called(rules.step, backend.name, "refused_budget")
                    raise BudgetExhausted(
                        f"the {over.scope} model budget for this month is spent",
                        subject=principal.account if over.scope == "key" else "global",
                        description=f"{over.scope} monthly model budget",
                    ) from None
                metrics.model_called(rules.step, backend.name, "over_budget")
                return fallback(rules, backend.name, f"the {over.scope} budget is spent")
            except BudgetUnavailable:
                metrics.model_called(rules.step, backend.name, "budget_unavailable")
                return fallback(rules, backend.name, "the budget could not be checked")
        used = Cost(worst, input_at_most, backend.max_output_tokens)
        outcome: metrics.ModelOutcome = "cancelled"
        started = time.monotonic()
        try:
            reply = await backend.ask(question, case, seconds=self.seconds(context))
            usage = reply.usage
            used = Cost(
                price.cost_usd_micros(usage.input_tokens, usage.output_tokens), usage.input_tokens, usage.output_tokens
            )
            outcome = "ok" if reply.answer is not None else "invalid_answer"
        except ModelUnavailable as unavailable:
            if not unavailable.billable:
                used = Cost()  # refused or never sent: nothing billed
            # else timed out in flight: the worst case, as for a cancelled call
            outcome = unavailable.kind
            return dataclasses.replace(fallback(rules, backend.name, unavailable.reason), cost=used)
        finally:
            _called(rules.step, backend.name, outcome, started)
            if used != Cost():
                context.ledger.append(
                    LedgerEntry(rules.step, backend.name, used.input_tokens, used.output_tokens, used.usd_micros)
                )
            if reservation is not None:
                self.budgets.settle(reservation, used.usd_micros)
        if reply.answer is None:
            warning = Warning(
                "model_invalid_answer",
                "",
                f"{backend.name} answered in the wrong format; its answer was discarded and the rules' stands",
            )
            return dataclasses.replace(rules, warnings=(*rules.warnings, warning), cost=used)
        combined = point.with_model(rules, reply.answer, backend.name, policy.strategy)
        return dataclasses.replace(combined, cost=used)

    async def narrate(
        self, case: Case, summary: str, config: RuntimeConfig, narration: Narration, context: RunContext
    ) -> AsyncIterator[str]:
        """Streams the configured model's narrative of `summary`; nothing when none is configured.

        What it cost, and a warning if it broke off, are left in `narration`.
        A caller that cancels mid-stream is charged what it received; a
        narrative that broke off or timed out once the provider had it is
        charged its input too.
        """
        name = config.narrative.backend
        if name == RULES:
            return
        backend = self.registry.model(name)
        price = config.price(name) or FREE
        principal = context.principal
        content = f"{describe_case(case)}\n\nSuggested level and reasons:\n{summary}"
        input_at_most = backend.input_tokens_at_most(NARRATIVE_PROMPT, content)
        worst = price.cost_usd_micros(input_at_most, backend.max_output_tokens)
        reservation = None
        if worst > 0:
            try:
                reservation = await self.budgets.reserve(principal, worst, seconds=self.seconds(context))
            except OverBudget as over:
                metrics.model_called(STEP_NARRATIVE, name, "over_budget")
                narration.warning = Warning(
                    "narrative_unavailable", "", f"no narrative: the {over.scope} budget is spent"
                )
                return
            except BudgetUnavailable:
                metrics.model_called(STEP_NARRATIVE, name, "budget_unavailable")
                narration.warning = Warning(
                    "narrative_unavailable", "", "no narrative: the budget could not be checked"
                )
                return
        received = 0
        billable = False  # the provider had the request
        usage: Usage | None = None
        outcome: metrics.ModelOutcome = "cancelled"
        started = time.monotonic()
        try:
            async for item in backend.narrate(case, summary, seconds=self.seconds(context)):
                if isinstance(item, Usage):
                    usage = item
                else:
                    received += len(item)
                    yield item
            outcome = "ok"
        except ModelUnavailable as unavailable:
            outcome = unavailable.kind
            billable = unavailable.billable
            narration.warning = Warning("narrative_unavailable", "", f"the narrative broke off ({unavailable.reason})")
        finally:
            _called(STEP_NARRATIVE, name, outcome, started)
            if usage is None or usage == Usage():
                # Cut short before the provider reported usage: count what was sent and received.
                usage = Usage(input_at_most if received or billable else 0, received // 3)
            cost = Cost(
                price.cost_usd_micros(usage.input_tokens, usage.output_tokens), usage.input_tokens, usage.output_tokens
            )
            narration.cost = cost
            if cost != Cost():
                context.ledger.append(
                    LedgerEntry(STEP_NARRATIVE, name, usage.input_tokens, usage.output_tokens, cost.usd_micros)
                )
            if reservation is not None:
                self.budgets.settle(reservation, cost.usd_micros)


@dataclass
class Narration:
    """What a narrative cost, and what went wrong with it, once it has been streamed."""

    cost: Cost = field(default_factory=Cost)
    warning: Warning | None = None


def _called(step: int, backend: str, outcome: metrics.ModelOutcome, started: float) -> None:
    """Counts a model step that got as far as the model; its time too unless its circuit kept it from calling."""
    metrics.model_called(step, backend, outcome, None if outcome == "circuit_open" else time.monotonic() - started)


def fallback(rules: StepResult, backend: str, reason: str) -> StepResult:
    """The rules' result, saying that the model was not heard and why."""
    finding = Finding(
        code="model.fallback",
        text=f"{backend} gave no answer ({reason}); the rules' answer stands",
        step=rules.step,
        input_field="",
    )
    return dataclasses.replace(rules, findings=(*rules.findings, finding))
