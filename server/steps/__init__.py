"""ESI v4's decision points, one module each, in the order the pipeline runs them.

`DECISION_POINTS` are A to D, asked in turn until one settles the level;
`REVIEW` (E) always comes last. A step's module holds its question, the rules'
answer, and how a learned estimate or a model's answer combines with it.
"""

from __future__ import annotations

from server.domain import Step
from server.steps.base import DecisionPoint, StepBackend, TriageRun
from server.steps.danger_zone import DANGER_ZONE
from server.steps.high_risk import HIGH_RISK
from server.steps.life_saving import LIFE_SAVING
from server.steps.resources import RESOURCES
from server.steps.review import REVIEW

DECISION_POINTS: tuple[DecisionPoint, ...] = (LIFE_SAVING, HIGH_RISK, RESOURCES, DANGER_ZONE)
STEPS: dict[Step, DecisionPoint] = {point.step: point for point in (*DECISION_POINTS, REVIEW)}
# The RuntimeConfig fields that route a decision point (the narrative's is not one).
CONFIG_FIELDS: tuple[str, ...] = tuple(p.config_field for p in DECISION_POINTS if p.config_field is not None)

__all__ = ["CONFIG_FIELDS", "DECISION_POINTS", "REVIEW", "STEPS", "DecisionPoint", "StepBackend", "TriageRun"]
