"""Decision point D: danger-zone vital signs? Yes: ESI 2 (or flagged, ESI 3, by policy); no: ESI 3.

The policy (RuntimeConfig.danger_zone_policy) is the rules' `up_triage` or
`flag_only`, or `learned`: up-triage only when the estimated risk of a
critical outcome is at or above the policy's threshold (the handbook's
"consider"); the findings then say so.
"""

from __future__ import annotations

import dataclasses

from server.domain import LEARNED, STEP_DANGER_ZONE_VITALS, StepResult
from server.esi.engine import RulesEngine
from server.learned import estimates
from server.learned.policy import LearnedSteps
from server.steps.base import DecisionPoint, TriageRun


class DangerZone(DecisionPoint):
    step = STEP_DANGER_ZONE_VITALS
    question = "Are the vital signs in the danger zone?"

    def rules(self, engine: RulesEngine, run: TriageRun) -> StepResult:
        return engine.danger_zone(run.facts, run.rules_danger_zone_policy, self.question)

    def learned_answer(self, engine: RulesEngine, run: TriageRun, learned: LearnedSteps) -> StepResult | None:
        """Under the `learned` policy: up-triage when the estimated risk is high enough."""
        if run.danger_zone_policy != LEARNED:
            return None
        risk = run.estimated(learned).risk
        threshold = learned.policy.danger_zone_up_triage_at_or_above
        up = risk.probability >= threshold
        result = engine.danger_zone(run.facts, "up_triage" if up else "flag_only", self.question)
        if not result.findings:
            return dataclasses.replace(result, backend=f"rules+{LEARNED}")
        verdict = "at or above" if up else "below"
        why = f"{risk.text}, {verdict} {estimates.percent(threshold)}"
        return dataclasses.replace(
            result,
            findings=tuple(dataclasses.replace(f, text=f"{f.text}; {why}") for f in result.findings),
            backend=f"rules+{LEARNED}",
        )


DANGER_ZONE = DangerZone()
