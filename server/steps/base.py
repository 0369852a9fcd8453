"""A decision point as a module: what every step gives the pipeline.

Each of ESI v4's decision points (A life_saving, B high_risk, C resources,
D danger_zone) and the review (E) is one module in this package, holding one
`DecisionPoint`: its step and letter, its question, the rules' answer from
the case as read, and, where the step has them, how a learned estimate and a
model's answer combine with the rules' under the step's strategy. The clinical
logic stays in the rules engine (server/esi) and its tables; the steps are
the glue. The pipeline (server/pipeline) iterates over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from server.backends.answers import ModelQuestion
from server.domain import STEP_LETTERS, Case, DangerZonePolicy, Step, StepResult
from server.esi.engine import CaseFacts, RulesEngine
from server.learned.estimates import Estimate, ResourceEstimate
from server.learned.features import input_field
from server.learned.policy import Estimates, LearnedSteps
from server.runtime_config import DangerZonePolicy as ConfiguredDangerZonePolicy
from server.runtime_config import RuntimeConfig, StepPolicy, Strategy


@dataclass
class TriageRun:
    """One case going through the pipeline: what backends may read."""

    case: Case
    # The rules engine's reading of the case. It is always made, because the
    # rules set the floor whichever backend answers a step.
    facts: CaseFacts
    danger_zone_policy: ConfiguredDangerZonePolicy
    results: list[StepResult] = field(default_factory=list)
    # The learned estimates, made when a step first needs them.
    estimates: Estimates | None = None

    def estimated(self, learned: LearnedSteps) -> Estimates:
        """The learned estimates for this case, made once."""
        if self.estimates is None:
            self.estimates = learned.estimate(self.facts)
        return self.estimates

    @property
    def rules_danger_zone_policy(self) -> DangerZonePolicy:
        """D's policy as the rules engine knows it ("learned" is resolved by the step)."""
        return "flag_only" if self.danger_zone_policy == "flag_only" else "up_triage"


class StepBackend(Protocol):
    """Answers pipeline steps: the rules engine, or (later) a model."""

    @property
    def name(self) -> str: ...

    async def answer(self, step: Step, run: TriageRun) -> StepResult: ...


class DecisionPoint:
    """One step of the pipeline. Subclasses set the class attributes and override what they use."""

    step: ClassVar[Step]
    question: ClassVar[str]
    # The step's StepPolicy in RuntimeConfig (and the admin Config message), if it has one.
    config_field: ClassVar[str | None] = None
    # What a model is asked at this step, if one may be.
    model_question: ClassVar[ModelQuestion[Any] | None] = None

    @property
    def letter(self) -> str:
        return STEP_LETTERS[self.step]

    def rules(self, engine: RulesEngine, run: TriageRun) -> StepResult:
        """The rules engine's answer from the case as read."""
        raise NotImplementedError

    def policy(self, config: RuntimeConfig) -> StepPolicy | None:
        """The step's routing in `config`, when it has one."""
        if self.config_field is None:
            return None
        policy: StepPolicy = getattr(config, self.config_field)
        return policy

    def learned_answer(self, engine: RulesEngine, run: TriageRun, learned: LearnedSteps) -> StepResult | None:
        """The step's answer when the learned estimates give it instead of a backend (D's `learned` policy)."""
        return None

    def with_learned(self, rules: StepResult, run: TriageRun, learned: LearnedSteps, strategy: Strategy) -> StepResult:
        """The rules' answer combined with the learned estimate under `strategy`."""
        return rules

    def with_model(self, rules: StepResult, answer: Any, backend: str, strategy: Strategy) -> StepResult:
        """The rules' answer combined with a model's (of `model_question`'s answer type) under `strategy`."""
        return rules


def strongest_input(estimate: Estimate | ResourceEstimate, run: TriageRun) -> str:
    """The input an estimate's strongest contributor came from ("" when none stands out)."""
    if not estimate.contributors:
        return ""
    return input_field(estimate.contributors[0].feature, run.facts)


# How sure a step is of an answer a model changed.
MODEL_CERTAINTY = 0.7
