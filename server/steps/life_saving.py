"""Decision point A: does the patient need an immediate life-saving intervention? Yes: ESI 1."""

from __future__ import annotations

from server.domain import STEP_LIFE_SAVING, StepResult
from server.esi.engine import RulesEngine
from server.steps.base import DecisionPoint, TriageRun


class LifeSaving(DecisionPoint):
    step = STEP_LIFE_SAVING
    question = "Does the patient need an immediate life-saving intervention?"

    def rules(self, engine: RulesEngine, run: TriageRun) -> StepResult:
        return engine.life_saving(run.facts, self.question)


LIFE_SAVING = LifeSaving()
