"""Clinical cases, one test per row of clinical_cases.toml: on the rules alone, and on the default configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from server.esi.engine import RulesEngine
from server.esi.tables import load_tables
from server.esi.vitals import STATE_CODES
from server.pipeline.pipeline import Pipeline
from server.runtime_config import RuntimeConfig
from server.validation import validate_case
from tests.support import case_kwargs, make_case
from triage.v1 import classification_pb2

CASES: list[dict[str, Any]] = tomllib.loads((Path(__file__).parent / "clinical_cases.toml").read_text())["case"]
# Floors that repeat a B red flag's condition word for word: on the rules alone
# B has already answered ESI 2 whenever they hold, so the review never raises
# the level with them and no case can show their code. They stay as the limit
# a model-based step can never go below (ESI.md "safety first"); the test
# below checks that each is still shadowed, so that it is named again as soon
# as a case could reach it.
SHADOWED_FLOORS = {
    "floor.neonatal_fever": "high_risk.neonatal_fever",
    "floor.young_infant_fever": "high_risk.young_infant_fever",
}
STEPS = {
    "life_saving": classification_pb2.STEP_LIFE_SAVING,
    "high_risk": classification_pb2.STEP_HIGH_RISK,
    "resources": classification_pb2.STEP_RESOURCES,
    "danger_zone_vitals": classification_pb2.STEP_DANGER_ZONE_VITALS,
    "review": classification_pb2.STEP_REVIEW,
}


@pytest.mark.parametrize("entry", CASES, ids=[c["id"] for c in CASES])
async def test_clinical_case(entry: dict[str, Any], engine: RulesEngine) -> None:
    pipeline = Pipeline(engine, danger_zone_policy=entry.get("policy", "up_triage"))
    case = validate_case(make_case(entry["complaint"], **case_kwargs(entry)))

    result = await pipeline.classify(case)

    codes = {f.code for f in result.findings}
    explanation = f"{result.rationale} findings={sorted(codes)}"
    assert result.esi_level == entry["level"], explanation
    if "decided_at" in entry:
        assert result.decided_at == STEPS[entry["decided_at"]], explanation
    for code in entry.get("findings", ()):
        assert code in codes, explanation
    for code in entry.get("absent", ()):
        assert code not in codes, explanation
    if "resources" in entry:
        assert result.resource_count == entry["resources"], [r.detail for r in result.resources]
    if "min_resources" in entry:
        assert result.resource_count >= entry["min_resources"], [r.detail for r in result.resources]
    for code in entry.get("warnings", ()):
        assert code in {w.code for w in result.warnings}, result.warnings
    if "max_confidence" in entry:
        assert result.confidence <= entry["max_confidence"]


@pytest.mark.parametrize("entry", [c for c in CASES if "policy" not in c], ids=lambda c: c["id"])
async def test_clinical_case_on_the_default_configuration(entry: dict[str, Any], engine: RulesEngine) -> None:
    pipeline = Pipeline(engine)
    case = validate_case(make_case(entry["complaint"], **case_kwargs(entry)))

    result = pipeline.result([step async for step in pipeline.steps(case, RuntimeConfig())])

    expected = entry.get("default_level", entry["level"])
    assert result.esi_level == expected, f"{result.rationale} (rules alone: ESI {entry['level']})"
    if "default_level" in entry:
        assert entry["default_because"][:2] in ("B:", "C:", "D:"), "A and the safety floors never depart"
    if entry["level"] == 1 or entry.get("decided_at") == "review":
        assert "default_level" not in entry


def test_every_case_names_a_level_and_a_unique_id() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(c["level"] in (1, 2, 3, 4, 5) for c in CASES)


def test_every_rule_and_floor_code_is_named_by_a_case() -> None:
    tables = load_tables()
    rules = {rule.code: rule for rule in tables.rules}
    floors = {floor.code: floor for floor in tables.floors}
    named = {code for case in CASES for code in case.get("findings", ())}

    untested = sorted((rules.keys() | floors.keys()) - named - SHADOWED_FLOORS.keys())
    assert not untested, f"no clinical case names these rule or floor codes in `findings`: {untested}"

    other_codes = {"resources.count"} | {
        f"danger_zone.{state.removeprefix('danger_zone_')}" for state in STATE_CODES if state.startswith("danger_zone_")
    }
    mentioned = {code for case in CASES for key in ("findings", "absent") for code in case.get(key, ())}
    stale = sorted(mentioned - rules.keys() - floors.keys() - other_codes)
    assert not stale, f"clinical cases name codes that no rule, floor or step produces: {stale}"

    for floor_code, rule_code in SHADOWED_FLOORS.items():
        assert floor_code not in named, f"{floor_code} is named by a case: remove it from SHADOWED_FLOORS"
        rule, floor = rules[rule_code], floors[floor_code]
        assert rule.step == "high_risk", f"{rule_code} no longer answers ESI 2"
        assert not rule.judgement, f"{rule_code} is a judgement call: a learned estimate may set it aside"
        assert floor.at_least_level == 2, f"{floor_code} no longer asks for ESI 2"
        assert rule.when == floor.when, f"{floor_code} is no longer shadowed by {rule_code}"
