"""Decision point B: high risk, new confusion, lethargy or disorientation, or severe pain? Yes: ESI 2.

The rules answer; a learned estimate (server/learned) or a model may then add
to that under the step's strategy (RuntimeConfig.high_risk):

- model, `most_urgent` or `model`: high risk if the rules or the model say so;
  at B every rules "yes" is a hard rule, so the two strategies are the same.
- learned, `most_urgent`: every rules "yes" stands; when the rules say no and
  the estimated risk of a critical outcome is at or above the firing
  threshold, B says yes and names the estimate and its strongest contributors.
- learned, `model`: as most_urgent, except that a rule marked a judgement call
  in rules.toml (ESI's "severe pain ... when the presentation is consistent
  with it") stands only when the estimate is at or above the confirming
  threshold. Red flags always stand.
"""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, ConfigDict, Field

from server.backends.answers import ModelQuestion
from server.domain import LEARNED, STEP_HIGH_RISK, Finding, StepResult
from server.esi.engine import RulesEngine
from server.learned import estimates
from server.learned.policy import LEARNED_CERTAINTY, LearnedSteps
from server.runtime_config import Strategy
from server.steps.base import MODEL_CERTAINTY, DecisionPoint, TriageRun, strongest_input


class HighRiskAnswer(BaseModel):
    """Decision point B."""

    model_config = ConfigDict(extra="forbid")

    high_risk: bool = Field(description="true if the patient should not wait: ESI 2")
    reasons: list[str] = Field(max_length=5, description="short clinical reasons, each under 200 characters")


MODEL_QUESTION = ModelQuestion(
    "high_risk",
    "ESI decision point B: is this a high-risk situation, new confusion, lethargy or disorientation, or "
    "severe pain or distress, so that the patient should not wait (ESI 2)? Answer high_risk and give the "
    "reasons.",
    HighRiskAnswer,
)


class HighRisk(DecisionPoint):
    step = STEP_HIGH_RISK
    question = "Is this a high-risk situation, new confusion, lethargy or disorientation, or severe pain or distress?"
    config_field = "high_risk"
    model_question = MODEL_QUESTION

    def rules(self, engine: RulesEngine, run: TriageRun) -> StepResult:
        return engine.high_risk(run.facts, self.question)

    def with_learned(self, rules: StepResult, run: TriageRun, learned: LearnedSteps, strategy: Strategy) -> StepResult:
        """B with the estimated risk of a critical outcome."""
        risk = run.estimated(learned).risk
        policy = learned.policy
        backend = f"{rules.backend}+{LEARNED}"
        findings = rules.findings
        set_aside: tuple[Finding, ...] = ()
        if strategy == "model" and risk.probability < policy.confirm_judgement_at_or_above:
            set_aside = tuple(f for f in findings if f.code in learned.judgement)
            findings = tuple(f for f in findings if f.code not in learned.judgement)
        if findings:
            # Another rule stands: the judgement calls set aside are still said.
            note = (_not_confirmed(set_aside, risk, policy.confirm_judgement_at_or_above),) if set_aside else ()
            return dataclasses.replace(rules, findings=(*findings, *note), backend=backend)
        if risk.probability >= policy.high_risk_at_or_above:
            threshold = estimates.percent(policy.high_risk_at_or_above)
            finding = Finding(
                "learned.high_risk", f"{risk.text} (acts from {threshold})", STEP_HIGH_RISK, strongest_input(risk, run)
            )
            return dataclasses.replace(
                rules,
                answer="yes: ESI 2 (learned estimate)",
                findings=(finding,),
                level=2,
                certainty=LEARNED_CERTAINTY,
                backend=LEARNED if rules.level is None else backend,
            )
        if set_aside:
            return dataclasses.replace(
                rules,
                answer=f"no ({risk.text})",
                findings=(_not_confirmed(set_aside, risk, policy.confirm_judgement_at_or_above),),
                level=None,
                certainty=LEARNED_CERTAINTY,
                backend=backend,
            )
        return dataclasses.replace(rules, answer=f"no ({risk.text})", backend=backend)

    def with_model(self, rules: StepResult, answer: HighRiskAnswer, backend: str, strategy: Strategy) -> StepResult:
        """High risk if the rules or the model say so; a rules "yes" is never undone (any strategy)."""
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
            certainty=MODEL_CERTAINTY,
            backend=backend,
        )


def _not_confirmed(set_aside: tuple[Finding, ...], risk: estimates.Estimate, threshold: float) -> Finding:
    """What a judgement call set aside said, and why it was not confirmed."""
    why = "; ".join(f.text for f in set_aside)
    return Finding(
        "learned.judgement_not_confirmed",
        f"{why}: not confirmed, {risk.text} (confirms from {estimates.percent(threshold)})",
        STEP_HIGH_RISK,
        set_aside[0].input_field,
    )


HIGH_RISK = HighRisk()
