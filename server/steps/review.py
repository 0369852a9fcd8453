"""The review (E): safety floors, confidence and rationale; it gives the final level."""

from __future__ import annotations

from server.domain import STEP_REVIEW, StepResult
from server.esi.engine import RulesEngine
from server.steps.base import DecisionPoint, TriageRun


class Review(DecisionPoint):
    step = STEP_REVIEW
    question = "Do safety floors apply, and how sure is the answer?"

    def rules(self, engine: RulesEngine, run: TriageRun) -> StepResult:
        return engine.review(run.facts, run.results, self.question)


REVIEW = Review()
