"""The learned estimates (server/learned) as the backend of decision points B and C.

The rules always answer first; the estimate is then combined with their answer
under the step's strategy, as a model's advice is (advice.py), but in plain
Python on the request path: no network, no cost, no budget.

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

import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources as package_files

from pydantic import BaseModel, ConfigDict, Field

from server.esi.engine import UNRECOGNIZED_COMPLAINT, CaseFacts, RulesEngine
from server.learned import estimates
from server.pipeline.model import STEP_HIGH_RISK, STEP_RESOURCES, Finding, StepResult
from server.runtime_config import LEARNED, Strategy

_LEARNED_CERTAINTY = 0.7


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
    """Combines the learned estimates with the rules' answers at B and C."""

    name = LEARNED

    def __init__(self, engine: RulesEngine, policy: LearnedPolicy | None = None) -> None:
        self._engine = engine
        self.policy = policy or load_policy()
        self._judgement = frozenset(r.code for r in engine.tables.rules if r.judgement)

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

    def danger_zone(self, facts: CaseFacts, found: Estimates) -> StepResult:
        """Decision point D under the `learned` policy: up-triage when the estimated risk is high enough."""
        threshold = self.policy.danger_zone_up_triage_at_or_above
        up = found.risk.probability >= threshold
        result = self._engine.danger_zone(facts, "up_triage" if up else "flag_only")
        if not result.findings:
            return dataclasses.replace(result, backend=f"rules+{LEARNED}")
        verdict = "at or above" if up else "below"
        why = f"{found.risk.text}, {verdict} {estimates.percent(threshold)}"
        return dataclasses.replace(
            result,
            findings=tuple(dataclasses.replace(f, text=f"{f.text}; {why}") for f in result.findings),
            backend=f"rules+{LEARNED}",
        )

    def high_risk(self, rules: StepResult, found: Estimates, strategy: Strategy) -> StepResult:
        """Decision point B with the estimated risk of a critical outcome."""
        risk = found.risk
        policy = self.policy
        backend = f"{rules.backend}+{LEARNED}"
        findings = rules.findings
        set_aside: tuple[Finding, ...] = ()
        if strategy == "model" and risk.probability < policy.confirm_judgement_at_or_above:
            set_aside = tuple(f for f in findings if f.code in self._judgement)
            findings = tuple(f for f in findings if f.code not in self._judgement)
        if findings:
            return dataclasses.replace(rules, findings=findings, backend=backend)
        if risk.probability >= policy.high_risk_at_or_above:
            threshold = estimates.percent(policy.high_risk_at_or_above)
            finding = Finding("learned.high_risk", f"{risk.text} (acts from {threshold})", STEP_HIGH_RISK, "")
            return dataclasses.replace(
                rules,
                answer="yes: ESI 2 (learned estimate)",
                findings=(finding,),
                level=2,
                certainty=_LEARNED_CERTAINTY,
                backend=LEARNED if rules.level is None else backend,
            )
        if set_aside:
            why = "; ".join(f.text for f in set_aside)
            note = Finding(
                "learned.judgement_not_confirmed",
                f"{why}: not confirmed, {risk.text} (confirms from "
                f"{estimates.percent(policy.confirm_judgement_at_or_above)})",
                STEP_HIGH_RISK,
                set_aside[0].input_field,
            )
            return dataclasses.replace(
                rules,
                answer=f"no ({risk.text})",
                findings=(note,),
                level=None,
                certainty=_LEARNED_CERTAINTY,
                backend=backend,
            )
        return dataclasses.replace(rules, answer=f"no ({risk.text})", backend=backend)

    def resources(self, rules: StepResult, found: Estimates, strategy: Strategy) -> StepResult:
        """Decision point C with the estimated number of resources."""
        estimate = found.resources
        count = estimate.count
        unrecognized = any(w.code == UNRECOGNIZED_COMPLAINT for w in rules.warnings)
        if strategy == "most_urgent" or unrecognized:
            # A complaint nothing recognised is never low acuity by default: the
            # rules' assumed work-up stands, and B and D rest on the estimate.
            count = max(count, min(rules.resource_count, 2))
        if count == min(rules.resource_count, 2):
            note = Finding("learned.resources", estimate.text, STEP_RESOURCES, "")
            return dataclasses.replace(rules, findings=(*rules.findings, note), backend=f"{rules.backend}+{LEARNED}")
        words = ("none", "one", "two or more")[count]
        return dataclasses.replace(
            rules,
            answer=f"{words} ({estimate.text})",
            findings=(
                Finding("resources.count", estimate.text, STEP_RESOURCES, ""),
                *(dataclasses.replace(f, code="resources.rules_count") for f in rules.findings),
            ),
            level=5 if count == 0 else 4 if count == 1 else None,
            certainty=min(rules.certainty, _LEARNED_CERTAINTY),
            resource_count=count,
            backend=f"{rules.backend}+{LEARNED}",
        )
