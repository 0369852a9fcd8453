"""The learned estimates' policy: when they act at decision points B, C and D.

The thresholds are data (data/policy.toml), chosen on NHAMCS 2016-2018 only;
how each step combines the estimate with the rules' answer is the step's own
(server/steps: high_risk.py, resources.py, danger_zone.py). In plain Python on
the request path: no network, no cost, no budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources as package_files

from pydantic import BaseModel, ConfigDict, Field

from server.esi.engine import CaseFacts, RulesEngine
from server.learned import estimates
from server.learned.features import CONCEPT

# How sure a step is of an answer the estimates changed.
LEARNED_CERTAINTY = 0.7


class LearnedPolicy(BaseModel):
    """When the estimates act (server/learned/data/policy.toml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    high_risk_at_or_above: float = Field(gt=0, lt=1)
    confirm_judgement_at_or_above: float = Field(gt=0, lt=1)
    danger_zone_up_triage_at_or_above: float = Field(gt=0, lt=1)
    # C: no resources (ESI 5) only when at least this sure of it; two or more
    # (on to D) from this probability; otherwise one (ESI 4). Safety first:
    # ESI 5 needs the most certainty.
    no_resources_at_or_above: float = Field(gt=0, lt=1)
    two_or_more_at_or_above: float = Field(gt=0, lt=1)
    source: str
    digest: str = ""


@cache
def load_policy() -> LearnedPolicy:
    raw = (package_files.files("server.learned") / "data" / "policy.toml").read_bytes()
    values = tomllib.loads(raw.decode()) | {"digest": hashlib.sha256(raw).hexdigest()[:8]}
    return LearnedPolicy.model_validate(values)


@dataclass(frozen=True, slots=True)
class Estimates:
    """Both estimates for one case, computed once per run."""

    risk: estimates.Estimate
    resources: estimates.ResourceEstimate


class LearnedSteps:
    """The learned estimates and their policy, as the steps use them (server/steps: B, C, D)."""

    def __init__(self, engine: RulesEngine, policy: LearnedPolicy | None = None) -> None:
        self.policy = policy or load_policy()
        # The B rules marked a judgement call in rules.toml: under `model` they need the estimate to confirm them.
        self.judgement = frozenset(r.code for r in engine.tables.rules if r.judgement)
        # The concepts that bring a work-up of their own (a modifier such as "severe" brings none).
        self._worked_up = frozenset(f"{CONCEPT}:{c.id}" for c in engine.tables.concepts.values() if c.resources)

    @property
    def version(self) -> str:
        """The model's content hash and the policy's: what the ruleset version must cover."""
        return f"learned.{estimates.model_version()[:8]}.{self.policy.digest}"

    def estimate(self, facts: CaseFacts) -> Estimates:
        policy = self.policy
        risk, resources = estimates.estimates(
            facts, no_resources_at=policy.no_resources_at_or_above, two_or_more_at=policy.two_or_more_at_or_above
        )
        if resources.unlearned:
            # Only a concept with a work-up of its own can be one the estimate would wrongly cut.
            unlearned = tuple(f for f in resources.unlearned if f in self._worked_up)
            resources = dataclasses.replace(resources, unlearned=unlearned)
        return Estimates(risk, resources)
