"""The triage pipeline: ESI decision points A -> B -> C -> D, then review E.

It iterates over the step modules (server/steps): each step goes to the
backend configured for it (the built-in rules engine by default), then its
module combines a learned estimate or a model's answer with the rules' when
the runtime configuration routes the step to one. The pipeline stops at the
first step that settles a level and always finishes with the review. The same
step results feed Classify (collected) and Explain (streamed as each step
completes). The caller's deadline, identity and cost ledger come in a
RunContext: the pipeline knows nothing of gRPC.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from opentelemetry import trace

from server.domain import STEP_LETTERS, STEP_REVIEW, Case, RunContext, Step, StepResult, TriageResult
from server.esi.engine import RulesEngine
from server.learned.policy import LearnedSteps
from server.pipeline.advice import Advisor
from server.runtime_config import LEARNED, RULES, DangerZonePolicy, RuntimeConfig
from server.steps import DECISION_POINTS, REVIEW, STEPS, DecisionPoint, StepBackend, TriageRun

__all__ = ["Pipeline", "RulesBackend", "StepBackend", "TriageRun"]


class RulesBackend:
    """The built-in rules engine as a step backend: free, offline, deterministic."""

    def __init__(self, engine: RulesEngine) -> None:
        self._engine = engine

    @property
    def name(self) -> str:
        return self._engine.name

    async def answer(self, step: Step, run: TriageRun) -> StepResult:
        point = STEPS.get(step)
        if point is None:
            raise ValueError(f"unknown step {step}")
        return point.rules(self._engine, run)


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
        self._backends: dict[Step, StepBackend] = dict.fromkeys(STEPS, rules) | dict(backends or {})

    @functools.cached_property
    def version(self) -> str:
        """The clinical tables' version and the learned estimates', which ship with them."""
        return f"{self.engine.version}+{self.learned.version}"

    async def steps(
        self, case: Case, config: RuntimeConfig | None = None, context: RunContext | None = None
    ) -> AsyncIterator[StepResult]:
        """Yields each step's result as it completes; the review comes last.

        `config` is the runtime configuration for this run (danger-zone policy,
        model routing); without one, the rules alone answer with the pipeline's
        own policy. `context` is the caller's (deadline, principal, ledger);
        without one there is no deadline and no one to charge. Between steps it
        checks the deadline (DeadlineExceeded, a domain error), so a call out
        of time stops rather than running every step to no one.
        """
        context = context if context is not None else RunContext()
        policy = config.danger_zone_policy if config is not None else self.danger_zone_policy
        run = TriageRun(case, self.engine.read(case), policy)
        for point in DECISION_POINTS:
            context.check_deadline()
            result = await self._answer(point, run, config, context)
            yield result
            if result.level is not None:
                break
        yield await self._answer(REVIEW, run, config, context)

    async def classify(
        self, case: Case, config: RuntimeConfig | None = None, context: RunContext | None = None
    ) -> TriageResult:
        """Runs every step and returns the result (the rules alone without a configuration)."""
        return self.result([step async for step in self.steps(case, config, context)])

    def result(self, steps: Sequence[StepResult]) -> TriageResult:
        """The pipeline's answer from its step results (the review is the last)."""
        review = steps[-1]
        if review.step != STEP_REVIEW or review.level is None:
            raise ValueError("the last step result must be the review, with a level")
        decided = next((s for s in reversed(steps[:-1]) if s.level is not None), None)
        if decided is None:
            raise ValueError("no decision point settled a level")
        return TriageResult.from_steps(
            tuple(steps),
            esi_level=review.level,
            confidence=review.certainty,
            decided_at=STEP_REVIEW if review.findings else decided.step,
            rationale=review.rationale,
            ruleset_version=self.version,
        )

    async def _answer(
        self, point: DecisionPoint, run: TriageRun, config: RuntimeConfig | None, context: RunContext
    ) -> StepResult:
        backend = self._backends[point.step]
        with self._span(point.step) as span:
            started = time.perf_counter()
            learned = point.learned_answer(self.engine, run, self.learned)
            if learned is not None:
                result = learned
            else:
                result = await backend.answer(point.step, run)
                result.backend = backend.name
            policy = point.policy(config) if config is not None else None
            if policy is not None and config is not None and policy.strategy != "rules" and policy.backend != RULES:
                if policy.backend == LEARNED:
                    result = point.with_learned(result, run, self.learned, policy.strategy)
                elif self.advisor is not None and point.model_question is not None:
                    # The rules have answered: the model may only add to that (advice.py).
                    result = await self.advisor.advise(result, run.case, point, policy, config, context)
            result.elapsed_seconds = time.perf_counter() - started
            span.set_attribute("triage.backend", result.backend)
            if result.level is not None:
                span.set_attribute("triage.esi_level", result.level)
        run.results.append(result)
        return result

    def _span(self, step: Step) -> contextlib.AbstractContextManager[trace.Span]:
        if self._tracer is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self._tracer.start_as_current_span(f"step {STEP_LETTERS[step]}")
