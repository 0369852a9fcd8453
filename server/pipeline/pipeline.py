"""The triage pipeline: ESI decision points A -> B -> C -> D, then review E.

Each step goes to the backend configured for it (the built-in rules engine by
default); the pipeline stops at the first step that settles a level and always
finishes with the review. The same step results feed Classify (collected) and
Explain (streamed as each step completes).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace

from server.calls import current_call
from server.esi.engine import CaseFacts, RulesEngine
from server.pipeline.advice import Advisor
from server.pipeline.learned import Estimates, LearnedSteps
from server.pipeline.model import (
    STEP_DANGER_ZONE_VITALS,
    STEP_HIGH_RISK,
    STEP_LETTERS,
    STEP_LIFE_SAVING,
    STEP_RESOURCES,
    STEP_REVIEW,
    Case,
    Step,
    StepResult,
    TriageResult,
)
from server.runtime_config import LEARNED, DangerZonePolicy, RuntimeConfig

DECISION_POINTS: tuple[Step, ...] = (STEP_LIFE_SAVING, STEP_HIGH_RISK, STEP_RESOURCES, STEP_DANGER_ZONE_VITALS)


@dataclass
class TriageRun:
    """One case going through the pipeline: what backends may read."""

    case: Case
    # The rules engine's reading of the case. It is always made, because the
    # rules set the floor whichever backend answers a step.
    facts: CaseFacts
    danger_zone_policy: DangerZonePolicy
    results: list[StepResult] = field(default_factory=list)
    # The learned estimates, made when a step first needs them.
    estimates: Estimates | None = None


class StepBackend(Protocol):
    """Answers pipeline steps: the rules engine, or (later) a model."""

    @property
    def name(self) -> str: ...

    async def answer(self, step: Step, run: TriageRun) -> StepResult: ...


class RulesBackend:
    """The built-in rules engine as a step backend: free, offline, deterministic."""

    def __init__(self, engine: RulesEngine) -> None:
        self._engine = engine

    @property
    def name(self) -> str:
        return self._engine.name

    async def answer(self, step: Step, run: TriageRun) -> StepResult:
        engine, facts = self._engine, run.facts
        if step == STEP_LIFE_SAVING:
            return engine.life_saving(facts)
        if step == STEP_HIGH_RISK:
            return engine.high_risk(facts)
        if step == STEP_RESOURCES:
            return engine.resources(facts)
        if step == STEP_DANGER_ZONE_VITALS:
            # "learned" is the pipeline's to resolve (learned.py); here it cannot arrive.
            return engine.danger_zone(facts, "flag_only" if run.danger_zone_policy == "flag_only" else "up_triage")
        if step == STEP_REVIEW:
            return engine.review(facts, run.results)
        raise ValueError(f"unknown step {step}")


class Pipeline:
    """Runs the ESI decision points for a case, step by step."""

    def __init__(
        self,
        engine: RulesEngine,
        *,
        danger_zone_policy: DangerZonePolicy = "up_triage",
        backends: Mapping[Step, StepBackend] | None = None,
        advisor: Advisor | None = None,
        learned: LearnedSteps | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.engine = engine
        # The learned estimates, for steps routed to them: free, offline, in process.
        self.learned = learned or LearnedSteps(engine)
        # Asks a model about B and C when the runtime configuration says so.
        self.advisor = advisor
        # A span per step when tracing is configured. Without it no span is
        # made at all: even the API's no-op spans cost about 20 us a call.
        self._tracer = tracer
        self.danger_zone_policy: DangerZonePolicy = danger_zone_policy
        rules = RulesBackend(engine)
        self._backends = dict.fromkeys((*DECISION_POINTS, STEP_REVIEW), rules) | dict(backends or {})

    @property
    def version(self) -> str:
        """The clinical tables' version and the learned estimates', which ship with them."""
        return f"{self.engine.version}+{self.learned.version}"

    async def steps(self, case: Case, config: RuntimeConfig | None = None) -> AsyncIterator[StepResult]:
        """Yields each step's result as it completes; the review comes last.

        `config` is the runtime configuration for this run (danger-zone policy,
        model routing); without one, the rules alone answer with the pipeline's
        own policy. Between steps it checks the call's deadline, so a call out
        of time stops rather than running every step to no one.
        """
        call = current_call()
        policy = config.danger_zone_policy if config is not None else self.danger_zone_policy
        run = TriageRun(case, self.engine.read(case), policy)
        for step in DECISION_POINTS:
            if call is not None:
                call.check_deadline()
            result = await self._answer(step, run, config)
            yield result
            if result.level is not None:
                break
        yield await self._answer(STEP_REVIEW, run, config)

    async def classify(self, case: Case, config: RuntimeConfig | None = None) -> TriageResult:
        """Runs every step and returns the result (the rules alone without a configuration)."""
        return self.result([step async for step in self.steps(case, config)])

    def result(self, steps: Sequence[StepResult]) -> TriageResult:
        """The pipeline's answer from its step results (the review is the last)."""
        review = steps[-1]
        if review.step != STEP_REVIEW or review.level is None:
            raise ValueError("the last step result must be the review, with a level")
        decided = next(s for s in reversed(steps[:-1]) if s.level is not None)
        return TriageResult.from_steps(
            tuple(steps),
            esi_level=review.level,
            confidence=review.certainty,
            decided_at=STEP_REVIEW if review.findings else decided.step,
            rationale=review.rationale,
            ruleset_version=self.version,
        )

    async def _answer(self, step: Step, run: TriageRun, config: RuntimeConfig | None) -> StepResult:
        backend = self._backends[step]
        with self._span(step) as span:
            started = time.perf_counter()
            if step == STEP_DANGER_ZONE_VITALS and run.danger_zone_policy == LEARNED:
                result = self.learned.danger_zone(run.facts, self._estimates(run))
            else:
                result = await backend.answer(step, run)
                result.backend = backend.name
            if config is not None:
                result = self._learned(step, result, run, config)
            if self.advisor is not None and config is not None:
                policy = self.advisor.policy(step, config)
                if policy is not None:
                    # The rules have answered: the model may only add to that (advice.py).
                    result = await self.advisor.advise(result, run.case, policy, config)
            result.elapsed_seconds = time.perf_counter() - started
            span.set_attribute("triage.backend", result.backend)
            if result.level is not None:
                span.set_attribute("triage.esi_level", result.level)
        run.results.append(result)
        return result

    def _learned(self, step: Step, result: StepResult, run: TriageRun, config: RuntimeConfig) -> StepResult:
        """The step's result combined with the learned estimate, when the step is routed to it."""
        if step == STEP_HIGH_RISK and config.high_risk.backend == LEARNED and config.high_risk.strategy != "rules":
            return self.learned.high_risk(result, self._estimates(run), config.high_risk.strategy)
        if step == STEP_RESOURCES and config.resources.backend == LEARNED and config.resources.strategy != "rules":
            return self.learned.resources(result, self._estimates(run), config.resources.strategy)
        return result

    def _estimates(self, run: TriageRun) -> Estimates:
        if run.estimates is None:
            run.estimates = self.learned.estimate(run.facts)
        return run.estimates

    def _span(self, step: Step) -> contextlib.AbstractContextManager[trace.Span]:
        if self._tracer is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self._tracer.start_as_current_span(f"step {STEP_LETTERS[step]}")
