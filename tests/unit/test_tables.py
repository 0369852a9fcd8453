"""The clinical tables load, cross-check, and name their sources."""

from __future__ import annotations

import pytest

from server.esi.engine import RulesEngine
from server.esi.tables import Condition, age_days, load_tables


def test_every_rule_and_floor_names_its_source() -> None:
    tables = load_tables()

    assert all(rule.source.strip() for rule in tables.rules)
    assert all(floor.source.strip() for floor in tables.floors)
    assert len({rule.code for rule in tables.rules}) == len(tables.rules)


def test_the_version_names_the_ruleset_and_the_content() -> None:
    name, _, digest = load_tables().version.partition("+")

    assert name.startswith("esi4-rules-")
    assert len(digest) == 8


def test_every_concept_term_is_reachable(engine: RulesEngine) -> None:
    """Each term of each concept, read on its own, finds its concept (no shadowing)."""
    shadowed = []
    for concept in engine.tables.concepts.values():
        for term in concept.terms:
            found = {m.concept for m in engine._analyzer.analyze(term, "chief_complaint")}
            if concept.id not in found:
                shadowed.append((concept.id, term, found))
    assert shadowed == []


@pytest.mark.parametrize(("spec", "days"), [("28d", 28), ("3mo", 91.3125), ("2y", 730.5)])
def test_age_specs(spec: str, days: float) -> None:
    assert age_days(spec) == pytest.approx(days)


def test_a_condition_needs_something_to_match() -> None:
    with pytest.raises(ValueError, match="condition needs"):
        Condition(min_age="1y")  # type: ignore[arg-type]
