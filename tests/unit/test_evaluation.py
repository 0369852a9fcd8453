"""`triage-server evaluate`: its arithmetic on hand-made visits, merging, the CLI, and a safety guard on real data."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import server.evaluation as evaluation
from server.cli import EVALUATION_DATASETS, main
from server.datasets import MIMIC_CSV, LabelledVisit, mimic_visit, nhamcs_visits
from server.domain import (
    STEP_DANGER_ZONE_VITALS,
    STEP_HIGH_RISK,
    STEP_LIFE_SAVING,
    STEP_RESOURCES,
    STEP_REVIEW,
    Step,
    StepResult,
)
from server.esi.engine import RulesEngine
from server.evaluation import (
    DATASETS,
    Evaluation,
    Evaluator,
    Report,
    evaluate_csv,
    evaluate_visits,
    run,
    runtime_config,
)
from server.pipeline.pipeline import Pipeline, TriageRun
from server.runtime_config import RULES_ONLY, RuntimeConfig
from server.validation import validate_case
from triage.v1 import case_pb2

# --- Hand-made visits through a scripted pipeline --------------------------------------------
#
# The real Pipeline runs, but every step is answered from the case_ref:
# "B2" = settled at B as ESI 2; "C4r1" = settled at C as ESI 4 predicting 1
# resource; "D3r2" = C predicts 2 resources, D settles ESI 3.


class Scripted:
    name = "scripted"

    def __init__(self) -> None:
        self.policies: set[str] = set()

    async def answer(self, step: Step, run: TriageRun) -> StepResult:
        self.policies.add(run.danger_zone_policy)
        ref = run.case.case_ref
        letter, level = ref[0], int(ref[1])
        resources = int(ref[3:]) if "r" in ref else 0
        mine = {"A": STEP_LIFE_SAVING, "B": STEP_HIGH_RISK, "C": STEP_RESOURCES, "D": STEP_DANGER_ZONE_VITALS}
        settled = level if step in (mine[letter], STEP_REVIEW) else None
        return StepResult(
            step=step,
            question="",
            answer="",
            level=settled,
            resource_count=resources if step == STEP_RESOURCES else 0,
        )


def scripted_evaluator(config: RuntimeConfig | None = None) -> tuple[Evaluator, Scripted]:
    scripted = Scripted()
    steps = (STEP_LIFE_SAVING, STEP_HIGH_RISK, STEP_RESOURCES, STEP_DANGER_ZONE_VITALS, STEP_REVIEW)
    pipeline = Pipeline(RulesEngine(), backends=dict.fromkeys(steps, scripted))
    return Evaluator(config or RULES_ONLY, pipeline), scripted


def visit(
    script: str,
    nurse: int | None,
    used: int | None = None,
    critical: bool | None = None,
    dropped: int = 0,
    complaint: str = "abdominal pain",
) -> LabelledVisit:
    case = case_pb2.TriageCase(chief_complaint=complaint, case_ref=script)
    case.age.years = 40
    return LabelledVisit(case, nurse, resources_used=used, critical_outcome=critical, values_dropped=dropped)


VISITS = [
    visit("A1", 1, used=3, critical=True),  # settled at A: no resource prediction
    visit("B2", 3, used=2, critical=True),  # settled at B: no resource prediction
    visit("C4r1", 4, used=1, critical=False, dropped=2),
    visit("C5r0", 3, used=2, critical=True),
    visit("D3r2", 2, used=4),
    visit("C4r1", 5, used=0, critical=False),
    visit("C4r1", None, used=1, critical=True, dropped=5),  # no nurse level: skipped
    visit("D2r3", 2, used=None, critical=True),  # reached C, resources used unknown
    visit("B2", 3),
    visit("C3r0", 3, used=0, dropped=1, complaint=""),  # refused by validation: skipped
]


async def evaluate_scripted(visits: list[LabelledVisit]) -> Evaluation:
    evaluator, _ = scripted_evaluator()
    return await evaluator.evaluate(visits)


async def test_every_figure_on_hand_made_visits() -> None:
    result = await evaluate_scripted(VISITS)

    # (nurse, engine): (1,1) (3,2) (4,4) (3,5) (2,3) (5,4) (2,2) (3,2)
    assert (result.rows, result.total, result.unlabelled, result.rejected) == (10, 8, 1, 1)
    assert result.values_dropped == 2  # only from evaluated visits
    assert result.rate("agree") == pytest.approx(3 / 8)
    assert result.rate("within_one") == pytest.approx(7 / 8)
    assert result.rate("under") == pytest.approx(2 / 8)  # (3,5) (2,3)
    assert result.rate("over") == pytest.approx(3 / 8)  # (3,2) twice, (5,4)
    # Quadratic kappa: sum of (a-b)^2 over the pairs = 8, so observed = 8/(16*8);
    # marginals nurse 1,2,3,1,1 and engine 1,3,1,2,1 give expected = 190/(16*64).
    assert result.quadratic_kappa() == pytest.approx(1 - (8 / 128) / (190 / 1024))
    assert result.quadratic_kappa() == pytest.approx(63 / 95)
    # ESI 1-2: the nurse put 3 there, the engine caught 2; 4 of 8 engine, 3 of 8 nurse.
    assert result.nurse_urgent == 3
    assert result.urgent_sensitivity() == pytest.approx(2 / 3)
    assert result.urgent_share("engine") == pytest.approx(4 / 8)
    assert result.urgent_share("nurse") == pytest.approx(3 / 8)
    # Resources: A1, B2, B2 never reached C; D2r3 has no count; the rest in classes (used, predicted):
    # (1,1) (2,0) (2,2) (0,1).
    assert (result.decided_before_c, result.resources_unknown, result.resources_total) == (3, 1, 4)
    assert result.resource_pairs == Counter({(1, 1): 1, (2, 0): 1, (2, 2): 1, (0, 1): 1})
    assert result.resource_rate("agree") == pytest.approx(2 / 4)
    assert result.resource_rate("fewer") == pytest.approx(1 / 4)
    assert result.resource_rate("more") == pytest.approx(1 / 4)
    # Critical (evaluated only): A1 (1,1), B2 (3,2), C5r0 (3,5), D2r3 (2,2).
    assert result.critical_total == 4
    assert result.outcomes_known == 6
    assert result.critical_capture("engine") == pytest.approx(3 / 4)
    assert result.critical_capture("nurse") == pytest.approx(2 / 4)

    figures = result.as_dict()
    assert figures["n"] == 8
    assert figures["quadratic_weighted_kappa"] == round(63 / 95, 4)
    assert figures["esi_1_2"] == {"nurse_1_2": 3, "sensitivity": 0.6667, "engine_share": 0.5, "nurse_share": 0.375}
    assert figures["confusion_matrix"] == {
        "nurse_esi_1": [1, 0, 0, 0, 0],
        "nurse_esi_2": [0, 1, 1, 0, 0],
        "nurse_esi_3": [0, 2, 0, 0, 1],
        "nurse_esi_4": [0, 0, 0, 1, 0],
        "nurse_esi_5": [0, 0, 0, 1, 0],
    }
    assert figures["resources"] == {
        "n": 4,
        "decided_before_c": 3,
        "resources_unknown": 1,
        "agreement": 0.5,
        "engine_fewer": 0.25,
        "engine_more": 0.25,
        "table": {"used_0": [0, 1, 0], "used_1": [0, 1, 0], "used_2+": [1, 0, 1]},
    }
    assert figures["critical_outcome"] == {"n": 4, "outcomes_known": 6, "engine_esi_1_2": 0.75, "nurse_esi_1_2": 0.5}


async def test_the_text_says_what_the_figures_are_counted_on() -> None:
    result = await evaluate_scripted(VISITS)

    text = result.report(DATASETS["nhamcs-test"])

    assert "not the truth" in text
    assert "evaluated 8 (n), without a level 1, refused by validation 1" in text
    assert "n 4: only visits that reached decision point C" in text
    assert "3 settled at A or B predict no resources and 1 have no recorded count" in text
    assert "critical outcome (ICU, death in the ED, intubation, central line, CPR or BiPAP), n 4:" in text
    assert "at ESI 1-2 engine 75.0%, nurse 50.0%" in text


async def test_merging_two_results_equals_evaluating_the_union() -> None:
    first, second = VISITS[:4], VISITS[4:]

    merged = await evaluate_scripted(first) + await evaluate_scripted(second)

    assert merged == await evaluate_scripted(VISITS)
    one_by_one = [await evaluate_scripted([v]) for v in VISITS]
    assert sum(one_by_one, Evaluation()) == merged


def test_an_empty_set_has_no_rates_rather_than_zeros() -> None:
    result = Evaluation()

    assert result.rate("agree") is None
    assert result.quadratic_kappa() is None
    assert result.as_dict()["critical_outcome"] == {
        "n": 0,
        "outcomes_known": 0,
        "engine_esi_1_2": None,
        "nurse_esi_1_2": None,
    }
    assert "resources used: not recorded in this set" in result.report(DATASETS["mimic-demo"])


def test_a_level_settled_at_b_by_the_rules_predicts_no_resources() -> None:
    chest_pain = case_pb2.TriageCase(chief_complaint="CP radiating to L arm, diaphoretic", sex=case_pb2.SEX_MALE)
    chest_pain.age.years = 67
    chest_pain.vitals.heart_rate_bpm = 110
    sprain = case_pb2.TriageCase(chief_complaint="twisted ankle, can walk")
    sprain.age.years = 25
    sprain.vitals.heart_rate_bpm = 80

    result = evaluate_visits(
        [LabelledVisit(chest_pain, 2, resources_used=3), LabelledVisit(sprain, 4, resources_used=1)]
    )

    assert result.pairs[(2, 2)] == 1
    assert result.decided_before_c == 1
    assert result.resources_total == 1


# --- The runtime configuration -----------------------------------------------------------------


def test_config_takes_the_same_settings_as_triage_admin_config_set() -> None:
    config = runtime_config(
        ["step.resources=learned", "strategy.resources=model", "danger_zone_policy=flag_only", "step.high_risk=x:y"]
    )

    assert config.resources.backend == "learned"
    assert config.resources.strategy == "model"
    assert config.high_risk.backend == "x:y"
    assert config.danger_zone_policy == "flag_only"
    assert runtime_config([]) == RuntimeConfig()


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("strategy.resources=sometimes", "most_urgent"),
        ("danger_zone_policy=maybe", "flag_only"),
        ("colour=blue", "is not a setting"),
        ("step.resources", "KEY=VALUE"),
    ],
)
def test_a_bad_config_value_is_refused(assignment: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        runtime_config([assignment])


async def test_the_config_reaches_the_pipeline() -> None:
    rules = ["step.high_risk=rules", "strategy.high_risk=rules", "step.resources=rules", "strategy.resources=rules"]
    evaluator, scripted = scripted_evaluator(runtime_config([*rules, "danger_zone_policy=flag_only"]))

    await evaluator.evaluate(VISITS[:3])

    assert scripted.policies == {"flag_only"}


# --- NHAMCS: read once, the aggregates merged from the years -------------------------------------

_NHAMCS_HEADER = (
    "year,triage_level,triage_scale_suspect,age_years,age_days,sex,arrival_ambulance,heart_rate_bpm,"
    "respiratory_rate_per_min,spo2_percent,systolic_bp_mmhg,diastolic_bp_mmhg,temperature_c,pain_score,"
    "rfv1_text,rfv2_text,esi_resource_count,admitted_icu,died_in_ed,res_complex_procedure"
)
_NHAMCS_ROWS = [
    "2016,2,0,67,,male,yes,112,22,93,150,90,37.0,8,Chest pain,Shortness of breath,4,1,0,0",
    "2016,4,0,25,,female,no,80,16,99,120,80,36.8,5,Ankle pain,,1,0,0,0",
    "2016,3,1,40,,female,no,80,16,99,120,80,36.8,5,Ankle pain,,1,0,0,0",  # suspect hospital-year
    "2017,3,0,0,45,male,no,150,40,98,,,38.5,,Fever,Cough,2,0,0,0",
    "2017,,0,50,,male,no,,,,,,,,Headache,,0,0,0,0",  # no triage level
    "2018,1,0,80,,female,yes,40,6,80,70,40,35.0,,Unresponsive,,,1,0,1",
    "2018,5,0,30,,male,no,70,14,99,125,75,36.6,0,Medication refill,,0,0,0,0",
    "2020,3,0,55,,female,no,95,18,97,140,85,37.2,6,Abdominal pain,Vomiting,3,0,0,",
    "2021,2,0,35,,female,no,130,24,96,100,60,38.9,7,Abdominal pain,,3,0,0,0",
]


@pytest.fixture
def nhamcs_file(tmp_path: Path) -> Path:
    path = tmp_path / "visits.csv.gz"
    with gzip.open(path, "wt", newline="") as handle:
        handle.write("\n".join([_NHAMCS_HEADER, *_NHAMCS_ROWS]) + "\n")
    return path


def test_nhamcs_is_read_once_and_the_aggregates_are_the_sum_of_the_years(
    nhamcs_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[int, ...]] = []

    def counted(path: Path, years: list[int]) -> Iterator[LabelledVisit]:
        reads.append(tuple(years))
        return nhamcs_visits(path, years)

    monkeypatch.setattr(evaluation, "nhamcs_visits", counted)

    report = run(["nhamcs-2016", "nhamcs-train", "nhamcs-test"], nhamcs_path=nhamcs_file)

    assert reads == [(2016, 2017, 2018, 2020, 2021)]
    results = report.results
    assert list(results) == ["nhamcs-2016", "nhamcs-train", "nhamcs-test"]
    assert (results["nhamcs-2016"].rows, results["nhamcs-2016"].total) == (2, 2)  # the suspect row is left out
    train = results["nhamcs-train"]
    assert (train.rows, train.total, train.unlabelled) == (6, 5, 1)
    assert train == evaluate_visits(nhamcs_visits(nhamcs_file, [2016, 2017, 2018]))
    assert results["nhamcs-test"] == evaluate_visits(nhamcs_visits(nhamcs_file, [2020, 2021]))
    # Critical outcomes: the 2016 ICU admission and the 2018 intubation; 2020 has a blank.
    assert train.critical_total == 2
    assert results["nhamcs-test"].outcomes_known == 1


# --- The command line ----------------------------------------------------------------------------


def evaluate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["evaluate", "--output", "json", *args]) == 0
    figures: dict[str, Any] = json.loads(capsys.readouterr().out)
    return figures


def test_the_cli_knows_every_named_dataset() -> None:
    assert tuple(DATASETS) == EVALUATION_DATASETS


def test_without_arguments_every_named_set_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    def fake_run(names: list[str], config: RuntimeConfig, *, csv_paths: list[Path]) -> Report:
        asked.append((names, config, csv_paths))
        return Report([], {}, "v", config)

    monkeypatch.setattr(evaluation, "run", fake_run)

    assert main(["evaluate"]) == 0
    assert main(["evaluate", "--dataset", "nhamcs-test", "--danger-zone-policy", "flag_only"]) == 0
    assert main(["evaluate", "--config", "step.resources=learned"]) == 0

    assert asked[0] == (list(DATASETS), RuntimeConfig(), [])
    assert asked[1][0] == ["nhamcs-test"]
    assert asked[1][1].danger_zone_policy == "flag_only"
    assert asked[2][1].resources.backend == "learned"


def mimic_by_hand() -> tuple[Counter[tuple[int, int]], int]:
    """The MIMIC demo classified one row at a time on the default configuration: (nurse, engine) counts, unlabelled."""
    import asyncio

    pipeline = Pipeline(RulesEngine())
    pairs: Counter[tuple[int, int]] = Counter()
    unlabelled = 0
    with MIMIC_CSV.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row["acuity"]:
                unlabelled += 1
                continue
            classified = asyncio.run(pipeline.classify(validate_case(mimic_visit(row).case), RuntimeConfig()))
            pairs[(int(float(row["acuity"])), classified.esi_level)] += 1
    return pairs, unlabelled


def test_json_for_the_mimic_demo(capsys: pytest.CaptureFixture[str]) -> None:
    figures = evaluate_json(capsys, "--dataset", "mimic-demo")

    assert list(figures) == ["mimic-demo"]
    demo = figures["mimic-demo"]
    assert set(demo) >= {
        "dataset",
        "labels",
        "rows",
        "n",
        "unlabelled",
        "rejected",
        "values_dropped",
        "exact_agreement",
        "within_one_level",
        "quadratic_weighted_kappa",
        "under_triage",
        "over_triage",
        "esi_1_2",
        "confusion_matrix",
        "resources",
        "critical_outcome",
        "ruleset_version",
        "config",
    }
    assert demo["ruleset_version"] == RulesEngine().version
    assert demo["config"] == RuntimeConfig().model_dump(mode="json")
    assert (demo["rows"], demo["unlabelled"], demo["rejected"], demo["values_dropped"]) == (222, 15, 0, 8)
    # MIMIC records neither resources used nor outcomes.
    assert demo["resources"]["n"] == 0
    assert demo["resources"]["decided_before_c"] + demo["resources"]["resources_unknown"] == 207
    assert demo["critical_outcome"]["n"] == demo["critical_outcome"]["outcomes_known"] == 0

    # The same figures, counted independently.
    pairs, unlabelled = mimic_by_hand()
    n = sum(pairs.values())
    assert (n, unlabelled) == (demo["n"], demo["unlabelled"])
    assert demo["confusion_matrix"] == {f"nurse_esi_{a}": [pairs[(a, b)] for b in range(1, 6)] for a in range(1, 6)}
    assert demo["exact_agreement"] == round(sum(pairs[(a, a)] for a in range(1, 6)) / n, 4)
    urgent = [(a, b) for (a, b) in pairs.elements() if a <= 2]
    assert demo["esi_1_2"]["sensitivity"] == round(sum(b <= 2 for _, b in urgent) / len(urgent), 4)
    assert demo["esi_1_2"]["engine_share"] == round(sum(b <= 2 for _, b in pairs.elements()) / n, 4)


def test_a_mimic_style_csv_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    by_path = evaluate_json(capsys, str(MIMIC_CSV))
    by_option = evaluate_json(capsys, "--csv", str(MIMIC_CSV))
    demo = evaluate_json(capsys, "--dataset", "mimic-demo")

    figures = {key: value for key, value in by_path[str(MIMIC_CSV)].items() if key != "dataset"}
    assert figures == {key: value for key, value in demo["mimic-demo"].items() if key != "dataset"}
    assert by_option == by_path

    assert main(["evaluate", str(MIMIC_CSV)]) == 0
    text = capsys.readouterr().out
    assert "evaluated 207" in text
    assert "confusion matrix" in text
    assert "under-triage" in text
    assert "the triage nurse's ESI level; a rating to compare with, not the truth" in text


def test_an_unknown_dataset_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--dataset", "nhamcs-2019"])

    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nhamcs-2019'" in err
    assert "nhamcs-test" in err


def test_a_bad_config_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--dataset", "mimic-demo", "--config", "strategy.resources=sometimes"])

    assert exit_.value.code == 2
    assert "--config 'strategy.resources=sometimes': 'sometimes': use one of" in capsys.readouterr().err


def test_a_missing_csv_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path / "none.csv")])

    assert exit_.value.code == 2
    assert "no such file" in capsys.readouterr().err


# --- A clinical-safety guard on real triage data -------------------------------------------------


def test_high_acuity_patients_are_rarely_sent_to_the_waiting_room() -> None:
    """Safety guard: of the patients nurses rated ESI 1-2, few may come out ESI 4-5."""
    result = evaluate_csv(MIMIC_CSV)

    sent_to_wait = sum(n for (nurse, engine), n in result.pairs.items() if nurse <= 2 and engine >= 4)
    assert result.total == 207
    assert sent_to_wait / result.nurse_urgent < 0.05
    within_one = result.rate("within_one")
    assert within_one is not None
    assert within_one > 0.9
