"""The learned estimates: features, the shipped model, and training (with scikit-learn, when installed)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest

from server.datasets import NHAMCS_CSV
from server.esi.engine import CaseFacts, RulesEngine
from server.esi.tables import load_tables
from server.learned import estimates, features
from server.learned.estimates import MIN_CONTRIBUTION, TOP_CONTRIBUTORS, model, read_model
from server.learned.policy import load_policy
from server.validation import validate_case
from tests.support import make_case
from triage.v1 import case_pb2

ENGINE = RulesEngine()
# Few enough visits to train in seconds, enough critical outcomes to cross-validate.
LIMIT = 600
VITAL_FAMILIES = ("heart_rate", "respiratory_rate", "spo2", "systolic_bp", "temperature", "pain")


def facts_of(message: case_pb2.TriageCase) -> CaseFacts:
    return ENGINE.read(validate_case(message))


def sick() -> CaseFacts:
    return facts_of(
        make_case(
            "shortness of breath",
            "85y",
            sex="female",
            arrival="ambulance",
            vitals={"spo2_percent": 85, "heart_rate_bpm": 104, "respiratory_rate_per_min": 24, "temperature_c": 37.2},
        )
    )


def well() -> CaseFacts:
    return facts_of(
        make_case(
            "sore throat",
            "25y",
            sex="male",
            arrival="walk_in",
            vitals={
                "spo2_percent": 99,
                "heart_rate_bpm": 78,
                "respiratory_rate_per_min": 16,
                "systolic_bp_mmhg": 122,
                "temperature_c": 36.8,
                "pain_score": 3,
            },
        )
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The shipped model


def test_the_shipped_model_loads_and_names_the_data_it_was_trained_on() -> None:
    shipped = model()
    assert shipped.data_sha256 == _sha256(NHAMCS_CSV)
    shipped_file = Path(estimates.__file__).parent / "data" / estimates.MODEL_FILE
    assert shipped.version == _sha256(shipped_file)[:12] == estimates.model_version()
    training = shipped.metadata["training"]
    assert training["training_years"] == [2016, 2017, 2018]
    assert training["limit"] is None
    assert 50 < shipped.feature_count < 3000
    metrics = shipped.metrics
    assert 0.5 < metrics["critical_outcome"]["cross_validation"]["auc"] <= 1
    assert 0.5 < metrics["critical_outcome"]["test"]["auc"] <= 1
    assert 0.34 < metrics["resources"]["cross_validation"]["accuracy"] <= 1
    assert 0.34 < metrics["resources"]["test"]["accuracy"] <= 1


def test_a_concept_too_rare_in_training_gets_no_weight_in_the_resource_model() -> None:
    # There a rare concept's weight would mostly carry the other reasons it came with.
    shipped = model()
    training = shipped.metadata["training"]
    least = training["min_resource_concept_count"]
    assert least > training["min_count"]
    concepts = {f for f in shipped.resources.weights if f.startswith("concept:")}
    assert concepts
    assert all(training["feature_counts"][f] >= least for f in concepts)
    assert "concept:sunburn" not in shipped.resources.weights
    # The critical outcome keeps them.
    rare = {f for f in shipped.critical.weights if f.startswith("concept:") and training["feature_counts"][f] < least}
    assert rare


def test_the_high_risk_threshold_comes_from_the_table_of_training_shares() -> None:
    shipped = model()
    assert sorted(shipped.thresholds) == [round(0.02 + 0.01 * i, 2) for i in range(29)]
    # A larger share of visits flagged needs a lower threshold.
    ordered = [shipped.thresholds[s] for s in sorted(shipped.thresholds)]
    assert ordered == sorted(ordered, reverse=True)
    assert shipped.high_risk_threshold == shipped.threshold_for_share(shipped.high_risk_share)
    with pytest.raises(KeyError):
        shipped.threshold_for_share(0.5)


# Features


def test_features_are_deterministic_with_one_feature_per_family() -> None:
    facts = sick()
    found = features.features(facts)
    assert found == features.features(sick())
    assert "concept:dyspnea" in found
    families = [features.family(f) for f in found if features.family(f) != features.CONCEPT]
    assert families == list(features.ONE_HOT_FAMILIES)
    assert {"age:80y+", "sex:female", "arrival:ambulance", "spo2:85-89", "heart_rate:18y+:100-119"} <= set(found)
    assert set(found) - {f for f in found if f.startswith("concept:")} <= set(features.possible_features())


def test_labels_name_the_case_s_own_values() -> None:
    facts = sick()
    labels = {f: features.label(f, facts) for f in features.features(facts)}
    assert labels["spo2:85-89"] == "SpO2 85 %"
    assert labels["age:80y+"] == "age 85 years"
    assert labels["arrival:ambulance"] == "arrived by ambulance"
    assert labels["heart_rate:18y+:100-119"] == "heart rate 104/min"
    assert labels["respiratory_rate:18y+:21-24"] == "respiratory rate 24/min"
    assert labels["temperature:36-37.9"] == "temperature 37.2 C"
    assert labels["concept:dyspnea"] == load_tables().concepts["dyspnea"].label
    assert labels["systolic_bp:18y+:missing"] == "blood pressure not measured"
    # The complaint's own words never appear, only concept labels and numbers.
    noted = facts_of(make_case("SOB since visiting Grandma Smith", "85y", vitals={"spo2_percent": 85}))
    assert "dyspnea" in noted.mentions
    for feature in features.features(noted):
        assert not {"SOB", "Smith", "Grandma", "visiting"} & set(features.label(feature, noted).split())
    # A concept the tables no longer have (a model older than the tables) still has a name.
    assert features.label("concept:retired_concept", facts) == "retired concept"


def test_age_bins_follow_the_pediatric_thresholds() -> None:
    def age_feature(age: str) -> str:
        return next(f for f in features.features(facts_of(make_case("cough", age))) if f.startswith("age:"))

    assert age_feature("10d") == "age:<28d"
    assert age_feature("28d") == "age:28d-2mo"
    assert age_feature("3mo") == "age:3-11mo"
    assert age_feature("1y") == "age:1-2y"
    assert age_feature("8y") == "age:8-17y"
    assert age_feature("18y") == "age:18-29y"
    assert age_feature("79y") == "age:70-79y"
    assert age_feature("101y") == "age:80y+"


def test_a_missing_vital_sign_gives_the_missing_bin_and_an_estimate() -> None:
    facts = facts_of(make_case("abdominal pain", "40y"))
    found = features.features(facts)
    for name in VITAL_FAMILIES:
        assert any(f.startswith(f"{name}:") and f.endswith(":missing") for f in found), name
    assert "sex:unknown" in found
    assert "arrival:unknown" in found
    risk, needed = estimates.estimates(facts)
    assert 0 < risk.probability < 1
    assert math.isclose(sum(needed.probabilities), 1)
    # Not knowing a value is not a fact about the patient: it is never named.
    assert not any(c.feature.endswith((":missing", ":unknown")) for c in (*risk.contributors, *needed.contributors))


def test_a_vital_sign_not_sent_counts_as_an_average_visit_s_not_as_a_sick_one() -> None:
    # In NHAMCS a missing blood pressure or pain score goes with sicker patients;
    # in service it only means the integration did not send it.
    bare = facts_of(make_case("medication refill", "52y"))
    model = estimates.model()
    served = model.critical.probabilities(features.features(bare))[1]
    as_trained = model.critical.probabilities(features.features(bare), as_trained=True)[1]

    assert served < as_trained
    assert served < load_policy().high_risk_at_or_above


# Estimates


def test_an_old_hypoxic_patient_by_ambulance_is_riskier_than_a_sore_throat() -> None:
    high, low = estimates.critical_risk(sick()), estimates.critical_risk(well())
    assert high.probability > 5 * low.probability
    assert high.probability >= load_policy().high_risk_at_or_above > low.probability
    assert estimates.resources(sick()).count == 2
    assert estimates.resources(well()).count < 2


def test_contributors_are_the_strongest_present_inputs() -> None:
    facts = sick()
    risk = estimates.critical_risk(facts)
    contributions = model().critical.contributions
    present = [f for f in features.features(facts) if not f.endswith((":missing", ":unknown"))]
    strongest = sorted(present, key=lambda f: -contributions.get(f, (0.0,))[0])[:TOP_CONTRIBUTORS]
    assert [c.feature for c in risk.contributors] == [f for f in strongest if contributions[f][0] > MIN_CONTRIBUTION]
    assert [c.weight for c in risk.contributors] == sorted((c.weight for c in risk.contributors), reverse=True)
    labels = [c.label for c in risk.contributors]
    assert len(labels) == TOP_CONTRIBUTORS
    # At least two of the four clinical reasons this patient is at risk.
    dyspnea = load_tables().concepts["dyspnea"].label
    assert len(set(labels) & {"SpO2 85 %", "age 85 years", "arrived by ambulance", dyspnea}) >= 2
    assert risk.text == (
        f"estimated risk of a critical outcome {estimates.percent(risk.probability)}: {', '.join(labels)}"
    )
    needed = estimates.resources(facts)
    assert needed.text.startswith(f"estimated two or more resources ({estimates.percent(needed.probability)}): ")


def test_the_resource_count_is_the_most_likely_or_set_by_thresholds() -> None:
    assert estimates.resource_count([0.5, 0.3, 0.2]) == 0
    assert estimates.resource_count([0.2, 0.3, 0.5]) == 2
    # Two or more is checked first (the safe side), no resources needs the most certainty.
    assert estimates.resource_count([0.5, 0.0, 0.5], no_resources_at=0.5, two_or_more_at=0.45) == 2
    assert estimates.resource_count([0.6, 0.3, 0.1], no_resources_at=0.7, two_or_more_at=0.45) == 1
    assert estimates.resource_count([0.7, 0.2, 0.1], no_resources_at=0.7, two_or_more_at=0.45) == 0
    with pytest.raises(ValueError, match="both"):
        estimates.resource_count([0.7, 0.2, 0.1], no_resources_at=0.7)
    facts = sick()
    needed = estimates.resources(facts, no_resources_at=1.0, two_or_more_at=1.0)
    assert needed.count == 1
    assert needed.text.startswith("estimated one resource")


def test_percentages_keep_small_risks_visible() -> None:
    assert estimates.percent(0.004) == "0.4 %"
    assert estimates.percent(0.18) == "18 %"
    assert estimates.percent(0.996) == "99.6 %"


# Training (needs the train extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("sklearn")
    from server.learned import train

    return train.run(tmp_path_factory.mktemp("model"), limit=LIMIT)


def test_plain_python_equals_scikit_learn(trained: Any) -> None:
    exported = read_model(trained.path)
    examples = trained.train
    critical = trained.critical.estimator.predict_proba(trained.matrix(examples))
    needed = trained.resources.estimator.predict_proba(trained.matrix(examples, trained.resources_vocabulary))
    assert len(examples) == LIMIT
    for row, example in enumerate(examples):
        ours = exported.critical.probabilities(example.features, as_trained=True)
        assert ours == pytest.approx(list(critical[row]), abs=1e-9)
        ours = exported.resources.probabilities(example.features, as_trained=True)
        assert ours == pytest.approx(list(needed[row]), abs=1e-9)


def test_the_training_command_is_reproducible(trained: Any, tmp_path: Path) -> None:
    from server.learned import train

    assert train.main(["--limit", str(LIMIT), "--output-dir", str(tmp_path)]) == 0
    written = tmp_path / estimates.MODEL_FILE
    assert written.read_bytes() == trained.path.read_bytes()
    exported = read_model(written)
    assert exported.metadata["training"]["limit"] == LIMIT
    assert exported.metadata["training"]["data_sha256"] == _sha256(NHAMCS_CSV)
    assert exported.feature_count > 10
    risk = estimates.critical_risk(sick(), shipped=exported)
    assert 0 < risk.probability < 1
