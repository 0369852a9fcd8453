"""The rules engine: ESI v4's decision points answered from the clinical tables.

`RulesEngine.read` turns a case into `CaseFacts` (concept mentions, vital-sign
states, risk factors) once; each step method then answers one decision point
from those facts. Deterministic: the same case and tables give the same answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.domain import (
    STEP_DANGER_ZONE_VITALS,
    STEP_HIGH_RISK,
    STEP_LETTERS,
    STEP_LIFE_SAVING,
    STEP_RESOURCES,
    STEP_REVIEW,
    Case,
    DangerZonePolicy,
    Finding,
    PredictedResource,
    RiskFactor,
    Step,
    StepResult,
    Warning,
)
from server.esi.tables import (
    DAYS_PER_YEAR,
    RESOURCE_LABELS,
    Concept,
    Condition,
    ResourceSpec,
    Tables,
    load_tables,
)
from server.esi.text import Mention, TextAnalyzer
from server.esi.vitals import (
    FIELD_LABELS,
    HEART_RATE,
    PAIN,
    RESPIRATORY_RATE,
    SPO2,
    VitalState,
    assess_vitals,
    danger_zone_band,
)
from triage.v1 import case_pb2, classification_pb2

_TEXT_FIELD_LABELS = {"chief_complaint": "chief complaint", "history": "history"}
_CHILD_BELOW_DAYS = 18 * DAYS_PER_YEAR
COMPLEX_PROCEDURE_WEIGHT = 2
# Certainty lost for each vital sign a step needed and did not get.
_MISSING_VITAL_PENALTY = 0.05
_UNRECOGNIZED_CERTAINTY = 0.45
# The warning of a complaint that matched no concept.
UNRECOGNIZED_COMPLAINT = "unrecognized_complaint"
_NEAR_THRESHOLD_CERTAINTY = 0.7


def resource_count(resources: Iterable[PredictedResource]) -> int:
    """ESI's count of different resources: a complex procedure counts as two."""
    return sum(
        COMPLEX_PROCEDURE_WEIGHT if r.kind == classification_pb2.RESOURCE_KIND_COMPLEX_PROCEDURE else 1
        for r in resources
    )


def resources_level(count: int) -> int | None:
    """Decision point C's level from the count: none is ESI 5, one ESI 4, two or more go on to D (None)."""
    return 5 if count == 0 else 4 if count == 1 else None


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a condition held: a quoted mention, a vital state or a risk factor."""

    text: str
    input_field: str


@dataclass(frozen=True)
class CaseFacts:
    """What the rules engine read from a case, computed once per case."""

    case: Case
    mentions: dict[str, Mention]
    states: dict[str, VitalState]
    risk_factors: dict[RiskFactor, Evidence]

    @property
    def age_days(self) -> float:
        return self.case.age.days


def _mention_evidence(mention: Mention) -> Evidence:
    return Evidence(f"{_TEXT_FIELD_LABELS[mention.input_field]} '{mention.quote}'", mention.input_field)


_Entry = TypeVar("_Entry")


class ConditionIndex(Generic[_Entry]):
    """Table entries indexed by one thing their condition requires.

    Every condition needs a concept, a vital state or a risk factor (or no fever
    source), so only entries whose first required group meets something present
    in the case can match: the rest are never evaluated. Order is kept.
    """

    def __init__(self, entries: Sequence[_Entry], condition: Callable[[_Entry], Condition]) -> None:
        self._entries = tuple(entries)
        self._by_key: dict[object, list[int]] = defaultdict(list)
        self._always: list[int] = []
        for position, entry in enumerate(self._entries):
            when = condition(entry)
            keys: list[tuple[str, object]] = (
                [("concept", c) for c in when.concepts]
                or [("state", s) for s in when.states]
                or [("risk", r) for r in when.risk_factors]
            )
            if not keys:
                self._always.append(position)
            for key in keys:
                self._by_key[key].append(position)

    def candidates(self, facts: CaseFacts) -> list[_Entry]:
        positions = set(self._always)
        for kind, present in (("concept", facts.mentions), ("state", facts.states), ("risk", facts.risk_factors)):
            for key in present:
                positions.update(self._by_key.get((kind, key), ()))
        return [self._entries[p] for p in sorted(positions)]


class RulesEngine:
    """Answers the ESI decision points from the clinical tables."""

    name = "rules"

    def __init__(self, tables: Tables | None = None) -> None:
        self.tables = tables or load_tables()
        self._analyzer = TextAnalyzer(self.tables.lexicon, self.tables.concepts.values())
        rules = self.tables.rules
        self._rules = {
            step: ConditionIndex([r for r in rules if r.step == step], lambda r: r.when)
            for step in ("life_saving", "high_risk")
        }
        self._floors = ConditionIndex(self.tables.floors, lambda f: f.when)
        self._modifiers = ConditionIndex(self.tables.resources.modifier, lambda m: m.when)

    @property
    def version(self) -> str:
        return self.tables.version

    # Reading the case

    def read(self, case: Case) -> CaseFacts:
        """Reads the text, vital signs and risk factors of a case into facts."""
        concepts = self.tables.concepts
        mentions = [
            *self._analyzer.analyze(case.chief_complaint, "chief_complaint"),
            *self._analyzer.analyze(case.history, "history"),
        ]
        current: dict[str, Mention] = {}
        for mention in mentions:
            if _counts(mention, concepts[mention.concept]):
                current.setdefault(mention.concept, mention)
        risks: dict[RiskFactor, Evidence] = {
            factor: Evidence(
                f"risk factor {case_pb2.RiskFactor.Name(factor).removeprefix('RISK_FACTOR_').lower()}",
                "risk_factors",
            )
            for factor in sorted(case.risk_factors)
        }
        for concept_id, mention in current.items():
            factor = concepts[concept_id].risk_factor
            if factor is not None:
                risks.setdefault(factor, _mention_evidence(mention))
        return CaseFacts(
            case=case,
            mentions=current,
            states=assess_vitals(case, self.tables.vitals),
            risk_factors=risks,
        )

    def match(self, facts: CaseFacts, condition: Condition) -> list[Evidence] | None:
        """The evidence for a condition, or None when it does not hold."""
        if not condition.age_matches(facts.age_days):
            return None
        if condition.sex is not None and not _sex_matches(facts.case.sex, condition.sex):
            return None
        if any(c in facts.mentions for c in condition.unless_concepts):
            return None
        if any(s in facts.states for s in condition.unless_states):
            return None
        if condition.no_fever_source and self._has_fever_source(facts):
            return None
        evidence: list[Evidence] = []
        for group in (condition.concepts, condition.with_concepts):
            if group:
                mention = next((facts.mentions[c] for c in group if c in facts.mentions), None)
                if mention is None:
                    return None
                evidence.append(_mention_evidence(mention))
        for states in (condition.states, condition.with_states):
            if states:
                state = next((facts.states[s] for s in states if s in facts.states), None)
                if state is None:
                    return None
                evidence.append(Evidence(state.text, state.input_field))
        if condition.risk_factors:
            risk = next((facts.risk_factors[r] for r in condition.risk_factors if r in facts.risk_factors), None)
            if risk is None:
                return None
            evidence.append(risk)
        return evidence

    def _has_fever_source(self, facts: CaseFacts) -> bool:
        return any(self.tables.concepts[c].fever_source for c in facts.mentions)

    # A and B

    def life_saving(self, facts: CaseFacts, question: str) -> StepResult:
        """Decision point A: does the patient need an immediate life-saving intervention?

        `question` is the step's wording (server/steps), quoted in its result; so for every step.
        """
        warnings = _missing(
            facts,
            [
                (SPO2, "oxygen saturation below 90 % could not be checked"),
                (RESPIRATORY_RATE, "a respiratory rate too low to breathe could not be checked"),
            ],
        )
        return self._rule_step(facts, STEP_LIFE_SAVING, question, "life_saving", 1, warnings)

    def high_risk(self, facts: CaseFacts, question: str) -> StepResult:
        """Decision point B: high risk, new confusion, or severe pain or distress?"""
        warnings = _missing(facts, [(PAIN, "severe pain was judged from the text alone")])
        return self._rule_step(facts, STEP_HIGH_RISK, question, "high_risk", 2, warnings)

    def _rule_step(
        self,
        facts: CaseFacts,
        step: Step,
        question: str,
        step_name: str,
        level: int,
        warnings: tuple[Warning, ...],
    ) -> StepResult:
        findings: list[Finding] = []
        certainty = 0.0
        for rule in self._rules[step_name].candidates(facts):
            evidence = self.match(facts, rule.when)
            if evidence is None:
                continue
            findings.append(
                Finding(
                    code=rule.code,
                    text=f"{rule.finding}: {'; '.join(e.text for e in evidence)}",
                    step=step,
                    input_field=evidence[0].input_field,
                )
            )
            certainty = max(certainty, rule.certainty)
        if findings:
            return StepResult(
                step=step,
                question=question,
                answer=f"yes: ESI {level}",
                findings=tuple(findings),
                level=level,
                certainty=certainty,
            )
        recognised = any(self.tables.concepts[c].resources is not None for c in facts.mentions)
        base = 0.9 if recognised else 0.7
        return StepResult(
            step=step,
            question=question,
            answer="no",
            certainty=max(0.3, base - _MISSING_VITAL_PENALTY * len(warnings)),
            warnings=warnings,
        )

    # C

    def resources(self, facts: CaseFacts, question: str) -> StepResult:
        """Decision point C: how many different resources will the patient need?"""
        child = facts.age_days < _CHILD_BELOW_DAYS
        predicted: dict[int, PredictedResource] = {}

        def add(specs: Iterable[ResourceSpec], reason: str, input_field: str) -> None:
            for spec in specs:
                predicted.setdefault(spec.kind, PredictedResource(spec.kind, spec.detail, reason, input_field))

        profiled = [
            (self.tables.concepts[concept_id], mention)
            for concept_id, mention in facts.mentions.items()
            if _profile(self.tables.concepts[concept_id], child) is not None
        ]
        primary = [(concept, mention) for concept, mention in profiled if not concept.fallback]
        for concept, mention in primary or profiled:
            profile = _profile(concept, child)
            assert profile is not None
            add(profile, f"{concept.label} ({_mention_evidence(mention).text})", mention.input_field)
        recognised = bool(profiled)
        for modifier in self._modifiers.candidates(facts):
            evidence = self.match(facts, modifier.when)
            if evidence is not None:
                add(modifier.add, f"{modifier.reason} ({'; '.join(e.text for e in evidence)})", evidence[0].input_field)
        warnings: tuple[Warning, ...] = ()
        certainty = 0.8
        if not recognised:
            add(self.tables.resources.unrecognized, self.tables.resources.unrecognized_reason, "chief_complaint")
            warnings = (
                Warning(
                    UNRECOGNIZED_COMPLAINT,
                    "chief_complaint",
                    "the complaint matched no known concept: resources were assumed, check them",
                ),
            )
            certainty = _UNRECOGNIZED_CERTAINTY
        resources = tuple(sorted(predicted.values(), key=lambda r: r.kind))
        count = resource_count(resources)
        if count in (1, 2):
            # One resource more or less moves the level: the answer is less sure.
            certainty = min(certainty, 0.75)
        level = resources_level(count)
        names = ", ".join(RESOURCE_LABELS[r.kind] for r in resources) or "none"
        return StepResult(
            step=STEP_RESOURCES,
            question=question,
            answer=f"{count} resource{'s' if count != 1 else ''} ({names})",
            findings=(
                Finding(
                    code="resources.count",
                    text=f"{count} resource{'s' if count != 1 else ''} predicted: {names}",
                    step=STEP_RESOURCES,
                    input_field=resources[0].input_field if resources else "chief_complaint",
                ),
            ),
            level=level,
            certainty=certainty,
            warnings=warnings,
            resources=resources,
            resource_count=count,
        )

    # D

    def danger_zone(self, facts: CaseFacts, policy: DangerZonePolicy, question: str) -> StepResult:
        """Decision point D: danger-zone vital signs in a patient needing two or more resources?"""
        t = self.tables.vitals
        zone = danger_zone_band(t, facts.age_days)
        v = facts.case.vitals
        checks = [
            (HEART_RATE, v.heart_rate_bpm, zone.heart_rate_above, "danger_zone_heart_rate"),
            (RESPIRATORY_RATE, v.respiratory_rate_per_min, zone.respiratory_rate_above, "danger_zone_respiratory_rate"),
            (SPO2, v.spo2_percent, t.spo2_danger_zone_below, "danger_zone_spo2"),
        ]
        warnings = _missing(facts, [(field, "its danger-zone limit could not be checked") for field, *_ in checks])
        certainty = 0.9 - _MISSING_VITAL_PENALTY * 2 * len(warnings)
        findings: list[Finding] = []
        for field, value, limit, state in checks:
            if value is None:
                continue
            if state in facts.states:
                findings.append(
                    Finding(
                        code=f"danger_zone.{state.removeprefix('danger_zone_')}",
                        text=f"danger-zone vital sign: {facts.states[state].text}",
                        step=STEP_DANGER_ZONE_VITALS,
                        input_field=field,
                    )
                )
            elif abs(value - limit) <= t.near_threshold_fraction * limit:
                certainty = min(certainty, _NEAR_THRESHOLD_CERTAINTY)
        if not findings:
            return StepResult(
                step=STEP_DANGER_ZONE_VITALS,
                question=question,
                answer="no: ESI 3",
                level=3,
                certainty=max(0.3, certainty),
                warnings=warnings,
            )
        if policy == "flag_only":
            flagged = tuple(
                Finding(f.code, f"{f.text} (policy: flag only, ESI 3 kept)", f.step, f.input_field) for f in findings
            )
            return StepResult(
                step=STEP_DANGER_ZONE_VITALS,
                question=question,
                answer="yes, flagged: ESI 3",
                findings=flagged,
                level=3,
                certainty=0.6,
                warnings=warnings,
            )
        upgraded = tuple(
            Finding(f.code, f"{f.text} (policy: up-triage to ESI 2)", f.step, f.input_field) for f in findings
        )
        return StepResult(
            step=STEP_DANGER_ZONE_VITALS,
            question=question,
            answer="yes: ESI 2",
            findings=upgraded,
            level=2,
            certainty=0.8,
            warnings=warnings,
        )

    # E

    def review(self, facts: CaseFacts, steps: Sequence[StepResult], question: str) -> StepResult:
        """The final review: safety floors, confidence and rationale."""
        deciding = next(s for s in reversed(steps) if s.level is not None)
        level = deciding.level
        assert level is not None
        findings: list[Finding] = []
        for floor in self._floors.candidates(facts):
            evidence = self.match(facts, floor.when)
            if evidence is not None and level > floor.at_least_level:
                level = floor.at_least_level
                findings.append(
                    Finding(
                        code=floor.code,
                        text=f"{floor.finding}: {'; '.join(e.text for e in evidence)}",
                        step=STEP_REVIEW,
                        input_field=evidence[0].input_field,
                    )
                )
        confidence = round(min(s.certainty for s in steps), 2)
        return StepResult(
            step=STEP_REVIEW,
            question=question,
            answer=f"ESI {level}" + (" (raised by a safety floor)" if findings else ""),
            findings=tuple(findings),
            level=level,
            certainty=confidence,
            rationale=_rationale(level, facts, [*steps, StepResult(STEP_REVIEW, "", "", tuple(findings))]),
        )


def _counts(mention: Mention, concept: Concept) -> bool:
    if mention.negated:
        return False
    if mention.historical and not concept.counts_when_historical:
        return False
    return not (mention.chronic and concept.acute_only)


def _sex_matches(sex: case_pb2.Sex.ValueType, wanted: str) -> bool:
    # Unknown or other sex matches both sides: sex-specific resources are then
    # predicted rather than missed.
    if sex in (case_pb2.SEX_UNSPECIFIED, case_pb2.SEX_OTHER):
        return True
    return sex == (case_pb2.SEX_FEMALE if wanted == "female" else case_pb2.SEX_MALE)


def _profile(concept: Concept, child: bool) -> tuple[ResourceSpec, ...] | None:
    if child and concept.child_resources is not None:
        return concept.child_resources
    return concept.resources


def _missing(facts: CaseFacts, needed: Sequence[tuple[str, str]]) -> tuple[Warning, ...]:
    vitals = facts.case.vitals
    return tuple(
        Warning("missing_input", field, f"{FIELD_LABELS[field]} not given: {consequence}")
        for field, consequence in needed
        if getattr(vitals, field.removeprefix("vitals.")) is None
    )


_LEVEL_MEANING = {
    1: "needs an immediate life-saving intervention",
    2: "should not wait",
    3: "stable, needs two or more resources",
    4: "stable, needs one resource",
    5: "stable, needs no resources",
}


def _rationale(level: int, facts: CaseFacts, steps: Sequence[StepResult]) -> str:
    """One paragraph a nurse can read: the level, why, and what each step found."""
    parts = [f"ESI {level}: {_LEVEL_MEANING[level]} ({facts.case.age.text})."]
    for step in steps:
        if step.step == STEP_REVIEW and not step.findings:
            continue
        letter = STEP_LETTERS[step.step]
        if step.findings:
            detail = "; ".join(f.text for f in step.findings)
            parts.append(f"{letter}: {detail}.")
        else:
            parts.append(f"{letter}: {step.answer}.")
    return " ".join(parts)
