"""The learned estimates' policy: when they act at decision points B, C and D.

The rules always answer first; the estimate is then combined with their answer
under the step's strategy (server/steps/high_risk.py, resources.py,
danger_zone.py), as a model's advice is, but in plain Python on the request
path: no network, no cost, no budget.

- B, `most_urgent`: every rules "yes" stands; when the rules say no and the
  estimated risk of a critical outcome is at or above the firing threshold, B
  says yes and names the estimate and its strongest contributors.
- B, `model`: as most_urgent, except that a rule marked a judgement call in
  rules.toml (ESI's "severe pain ... when consistent", "suspicious for ACS")
  stands only when the estimate is at or above the confirming threshold. Red
  flags always stand; A, the safety floors and D are never touched.
- C, `model`: the estimated count (0 / 1 / 2 or more) sets the level; the
  rules' resource list stays as what the nurse can check.
- C, `most_urgent`: the larger of the two counts.

The thresholds are data, chosen on NHAMCS 2016-2018 (data/policy.toml).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources as package_files

from pydantic import BaseModel, ConfigDict, Field

from server.domain import LEARNED
from server.esi.engine import CaseFacts, RulesEngine
from server.learned import estimates

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

    name = LEARNED

    def __init__(self, engine: RulesEngine, policy: LearnedPolicy | None = None) -> None:
        self.policy = policy or load_policy()
        # The B rules marked a judgement call in rules.toml: under `model` they need the estimate to confirm them.
        self.judgement = frozenset(r.code for r in engine.tables.rules if r.judgement)

    @property
    def version(self) -> str:
        """The model's content hash and the policy's: what the ruleset version must cover."""
        return f"learned.{estimates.model_version()[:8]}.{self.policy.digest}"

    def estimate(self, facts: CaseFacts) -> Estimates:
        policy = self.policy
        risk, resources = estimates.estimates(
            facts, no_resources_at=policy.no_resources_at_or_above, two_or_more_at=policy.two_or_more_at_or_above
        )
        return Estimates(risk, resources)
