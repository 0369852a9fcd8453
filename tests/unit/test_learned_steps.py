"""The learned estimates as the backend of B, C and D: how they meet the rules' answers."""

from __future__ import annotations

import pytest

from server.domain import TriageResult
from server.esi.engine import RulesEngine
from server.learned.policy import LearnedPolicy, LearnedSteps, load_policy
from server.pipeline.pipeline import Pipeline
from server.runtime_config import RULES_ONLY, RuntimeConfig, StepPolicy, Strategy
from server.validation import validate_case
from tests.support import make_case

# Thresholds that always or never act, so that each combination is tested on its own.
ALWAYS = 0.000001
NEVER = 0.999999


def policy(**thresholds: float) -> LearnedPolicy:
    return load_policy().model_copy(update=thresholds)


async def classify(
    engine: RulesEngine,
    complaint: str,
    age: str = "50y",
    *,
    learned: LearnedPolicy | None = None,
    high_risk: Strategy = "model",
    resources: Strategy = "model",
    danger_zone: str = "learned",
    **case: object,
) -> TriageResult:
    pipeline = Pipeline(engine, learned=LearnedSteps(engine, learned) if learned else None)
    config = RuntimeConfig(
        high_risk=StepPolicy(backend="learned", strategy=high_risk),
        resources=StepPolicy(backend="learned", strategy=resources),
        danger_zone_policy=danger_zone,  # type: ignore[arg-type]
    )
    return await pipeline.classify(validate_case(make_case(complaint, age, **case)), config)  # type: ignore[arg-type]


def codes(result: TriageResult) -> set[str]:
    return {f.code for f in result.findings}


# B


async def test_b_fires_on_the_estimate_and_names_it_and_its_strongest_inputs(engine: RulesEngine) -> None:
    result = await classify(
        engine, "SOB", "81y", arrival="ambulance", vitals={"spo2_percent": 91, "heart_rate_bpm": 104}
    )

    assert result.esi_level == 2
    [finding] = [f for f in result.findings if f.code == "learned.high_risk"]
    assert finding.text.startswith("estimated risk of a critical outcome ")
    assert "arrived by ambulance" in finding.text
    assert "age 81 years" in finding.text
    assert next(s for s in result.steps if s.step == finding.step).backend == "learned"


async def test_below_the_threshold_b_says_no_and_shows_the_estimate(engine: RulesEngine) -> None:
    result = await classify(engine, "sore throat", "25y", vitals={"heart_rate_bpm": 80})

    b = result.steps[1]
    assert b.level is None
    assert b.answer.startswith("no (estimated risk of a critical outcome")
    assert b.backend == "rules+learned"


@pytest.mark.parametrize(
    ("strategy", "level", "code"),
    [
        ("model", 3, "learned.judgement_not_confirmed"),  # set aside: the estimate is below the confirming threshold
        ("most_urgent", 2, "high_risk.severe_pain_with_tachycardia"),  # every rules "yes" stands
    ],
)
async def test_a_judgement_call_needs_the_estimate_under_model_only(
    engine: RulesEngine, strategy: Strategy, level: int, code: str
) -> None:
    never = policy(confirm_judgement_at_or_above=NEVER, high_risk_at_or_above=NEVER)

    result = await classify(
        engine, "back pain", "45y", learned=never, high_risk=strategy, danger_zone="flag_only",
        vitals={"pain_score": 9, "heart_rate_bpm": 118},
    )  # fmt: skip

    assert result.esi_level == level
    assert code in codes(result)


async def test_a_judgement_call_set_aside_beside_a_red_flag_is_still_said(engine: RulesEngine) -> None:
    never = policy(confirm_judgement_at_or_above=NEVER)

    result = await classify(engine, "chest pain", "55y", learned=never, vitals={"pain_score": 9, "heart_rate_bpm": 118})

    assert result.esi_level == 2
    assert {"high_risk.possible_acs", "learned.judgement_not_confirmed"} <= codes(result)
    assert "high_risk.severe_pain_with_tachycardia" not in codes(result)


async def test_a_confirmed_judgement_call_stands(engine: RulesEngine) -> None:
    result = await classify(
        engine, "back pain", "45y", learned=policy(confirm_judgement_at_or_above=ALWAYS),
        vitals={"pain_score": 9, "heart_rate_bpm": 118},
    )  # fmt: skip

    assert result.esi_level == 2
    assert "high_risk.severe_pain_with_tachycardia" in codes(result)


async def test_a_red_flag_stands_whatever_the_estimate(engine: RulesEngine) -> None:
    never = policy(confirm_judgement_at_or_above=NEVER, high_risk_at_or_above=NEVER)

    result = await classify(engine, "L facial droop, slurred speech", "30y", learned=never)

    assert result.esi_level == 2
    assert "high_risk.stroke_signs" in codes(result)


async def test_a_stays_the_floor(engine: RulesEngine) -> None:
    never = policy(high_risk_at_or_above=NEVER, danger_zone_up_triage_at_or_above=NEVER)

    result = await classify(engine, "SOB", "30y", learned=never, vitals={"spo2_percent": 85})

    assert result.esi_level == 1


# C


async def test_c_takes_the_estimated_count_under_model(engine: RulesEngine) -> None:
    # The rules expect an x-ray for an ankle injury; the estimate (forced here) says none.
    result = await classify(engine, "ankle injury", "30y", learned=policy(no_resources_at_or_above=ALWAYS))

    assert result.esi_level == 5
    assert result.resource_count == 0
    assert any(f.code == "resources.count" and f.text.startswith("estimated no resources") for f in result.findings)


async def test_c_takes_the_larger_count_under_most_urgent(engine: RulesEngine) -> None:
    # The rules expect labs and imaging for abdominal pain; the estimate may not outvote them.
    learned = policy(no_resources_at_or_above=ALWAYS)
    result = await classify(
        engine, "abd pain", "40y", learned=learned, resources="most_urgent", danger_zone="flag_only"
    )

    assert result.esi_level == 3
    assert "learned.resources" in codes(result)


async def test_a_procedure_the_rules_call_for_is_not_cut_by_the_estimate(engine: RulesEngine) -> None:
    # A laceration needs a repair (ESI 4) whatever the estimate (forced here to "none") says.
    result = await classify(engine, "2 cm lac to L palm", "30y", learned=policy(no_resources_at_or_above=ALWAYS))

    assert result.esi_level == 4
    assert "learned.resources" in codes(result)


async def test_a_danger_zone_vital_sign_still_reaches_d(engine: RulesEngine) -> None:
    # The rules expect two resources for abdominal pain; an estimate of none must not skip D's check.
    forced = policy(no_resources_at_or_above=ALWAYS, danger_zone_up_triage_at_or_above=ALWAYS)

    result = await classify(engine, "abd pain", "35y", learned=forced, vitals={"heart_rate_bpm": 125})

    assert result.esi_level == 2
    assert "danger_zone.heart_rate" in codes(result)


# The estimate forced to "none": whatever it would say, C may not go below the rules for these.
ESTIMATE_NONE = policy(no_resources_at_or_above=ALWAYS, two_or_more_at_or_above=NEVER)


@pytest.mark.parametrize(
    ("complaint", "unlearned"),
    [
        # NHAMCS's reason-for-visit codes have no hypoglycemia or fall, and 11 transfers: too few to learn.
        ("hypoglycemia", "low blood sugar"),
        ("s/p fall", "fall"),
        ("transfer from OSH", "transfer from another facility"),
    ],
)
async def test_an_estimate_does_not_cut_the_work_up_of_a_concept_it_never_learned(
    engine: RulesEngine, complaint: str, unlearned: str
) -> None:
    rules = await Pipeline(engine).classify(validate_case(make_case(complaint, "25y")), RULES_ONLY)

    result = await classify(engine, complaint, "25y", learned=ESTIMATE_NONE, danger_zone="flag_only")

    assert min(result.resource_count, 2) == min(rules.resource_count, 2) > 0
    assert result.esi_level == rules.esi_level < 5
    note = next(f for f in result.findings if f.code == "learned.resources")
    assert f"not learned from the training visits: {unlearned}, so the rules' work-up is the least" in note.text
    assert note.input_field == "chief_complaint"


@pytest.mark.parametrize(
    "complaint",
    [
        "ankle injury",  # in thousands of training visits
        "severe ankle injury",  # "severe" was too rare to learn, but brings no work-up of its own
    ],
)
async def test_a_learned_concept_is_the_estimates_to_count(engine: RulesEngine, complaint: str) -> None:
    result = await classify(engine, complaint, "30y", learned=ESTIMATE_NONE, danger_zone="flag_only")

    assert result.resource_count == 0
    assert result.esi_level == 5
    assert not any("not learned" in f.text for f in result.findings)


async def test_an_unrecognised_complaint_is_never_low_acuity_by_default(engine: RulesEngine) -> None:
    result = await classify(engine, "zorblax", "25y", learned=policy(no_resources_at_or_above=ALWAYS))

    assert result.esi_level == 3
    assert result.confidence <= 0.5
    assert "unrecognized_complaint" in {w.code for w in result.warnings}


# D


@pytest.mark.parametrize(("threshold", "level", "says"), [(ALWAYS, 2, "at or above"), (NEVER, 3, "below")])
async def test_d_under_the_learned_policy_asks_the_estimate(
    engine: RulesEngine, threshold: float, level: int, says: str
) -> None:
    learned = policy(danger_zone_up_triage_at_or_above=threshold, high_risk_at_or_above=NEVER)

    result = await classify(
        engine, "abd pain", "35y", learned=learned, sex="male",
        vitals={"heart_rate_bpm": 112, "respiratory_rate_per_min": 18, "spo2_percent": 98},
    )  # fmt: skip

    assert result.esi_level == level
    [finding] = [f for f in result.findings if f.code == "danger_zone.heart_rate"]
    assert "estimated risk of a critical outcome" in finding.text
    assert says in finding.text


# What the answer says it came from


async def test_the_ruleset_version_covers_the_model_and_its_policy(engine: RulesEngine) -> None:
    shipped = Pipeline(engine)
    changed = Pipeline(engine, learned=LearnedSteps(engine, policy(high_risk_at_or_above=0.5)))
    result = await shipped.classify(validate_case(make_case("chest pain", "60y")), RuntimeConfig())

    assert result.ruleset_version == shipped.version
    assert shipped.version.startswith(engine.version + "+learned.")
    # The same thresholds give the same version; a policy file with others would not.
    assert changed.version == shipped.version
    assert load_policy().digest in shipped.version


async def test_the_rules_alone_never_ask_the_estimates(engine: RulesEngine) -> None:
    pipeline = Pipeline(engine)

    result = await pipeline.classify(validate_case(make_case("SOB", "81y", arrival="ambulance")), RULES_ONLY)

    assert all(s.backend == "rules" for s in result.steps)
    assert not any(f.code.startswith("learned.") for f in result.findings)
