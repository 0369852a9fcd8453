"""The concept inventory covers what US emergency departments see, as it is typed.

Every reason for visit of the NCHS Reason for Visit Classification (the 837
codes of tests/data/nhamcs-ed/rfv_codes.csv, labels cut short with "..."
included) reads as at least one current concept; every concept says what it
is, and the concepts added for these reasons say where their terms and
resources come from. ED abbreviations read in their ED sense.
"""

from __future__ import annotations

import pytest

from server.datasets import rfv_codes
from server.esi.engine import RulesEngine
from server.validation import validate_case
from tests.support import make_case

# Concepts added for the NCHS reasons for visit: each names its codes and the
# NHAMCS 2016-2018 resource use its profile was checked against.
NCHS_CONCEPTS = frozenset(
    {
        "unspecified_complaint",
        "administrative_visit",
        "test_requested",
        "medical_counseling",
        "infusion_injection",
        "procedure_visit",
        "medication_problem",
        "endocrine_metabolic",
        "weight_appetite",
        "infant_concern",
        "social_problem",
        "police_custody",
        "sexual_reproductive_health",
        "substance_use",
        "neurologic_problem",
        "heart_circulatory",
        "skin_problem",
        "musculoskeletal_symptom",
        "bleeding_unspecified",
        "mouth_problem",
        "respiratory_problem",
        "digestive_problem",
        "male_genital_problem",
        "menstrual_gynecologic",
        "pregnancy_problem",
        "breast_problem",
        "hiv_concern",
        "parasitic_infestation",
        "accident_unspecified",
        "environmental_exposure",
    }
)

RFV_CODES = rfv_codes()


def test_the_classification_is_complete() -> None:
    assert len(RFV_CODES) == 837


def test_every_reason_for_visit_reads_as_a_current_concept(engine: RulesEngine) -> None:
    unmapped = [
        f"{code} {text}"
        for code, text in RFV_CODES.items()
        if not engine.read(validate_case(make_case(text, "40y"))).mentions
    ]

    assert not unmapped, f"{len(unmapped)} reasons for visit read as no current concept:\n" + "\n".join(unmapped)


# Reasons for visit that once read as a life-saving or high-risk concept they
# do not mean (a word one edit from another, a term inside a longer one).
MISREAD_BEFORE = [
    ("11355", "respiratory_arrest"),  # Sleep apnea
    ("89910", "severe_respiratory_distress"),  # Patient unable to speak English
    ("26753", "active_cancer"),  # Canker sore
    ("15350", "overdose"),  # Heartburn and indigestion: not "ingestion"
    ("23550", "cord_compression"),  # Parkinson's disease (paralysis agitans)
    ("11305", "seizure"),  # Obsessions and compulsions: not "convulsions"
    ("45652", "high_risk_mechanism"),  # Transplant, rejection: not "ejection"
    ("16003", "brief_resolved_event"),  # Changes in size, color, shape, or odor of stools
    ("13251", "respiratory_distress_signs"),  # Abnormal retraction of eye
    ("46052", "active_cancer"),  # Family history of cancer
]


@pytest.mark.parametrize(("code", "wrong"), MISREAD_BEFORE, ids=[c for c, _ in MISREAD_BEFORE])
def test_a_reason_for_visit_is_not_read_as_what_it_does_not_mean(engine: RulesEngine, code: str, wrong: str) -> None:
    mentions = engine.read(validate_case(make_case(RFV_CODES[code], "40y"))).mentions

    assert mentions
    assert wrong not in mentions, mentions


def test_every_concept_has_a_label(engine: RulesEngine) -> None:
    assert [c.id for c in engine.tables.concepts.values() if not c.label.strip()] == []


def test_every_concept_added_for_the_reasons_for_visit_names_its_source(engine: RulesEngine) -> None:
    concepts = engine.tables.concepts
    assert concepts.keys() >= NCHS_CONCEPTS
    unsourced = [cid for cid in sorted(NCHS_CONCEPTS) if "NCHS RFV" not in concepts[cid].source]
    unmeasured = [cid for cid in sorted(NCHS_CONCEPTS) if "NHAMCS 2016-2018" not in concepts[cid].source]

    assert unsourced == []
    assert unmeasured == []


def test_no_concept_added_for_the_reasons_for_visit_makes_a_patient_high_risk(engine: RulesEngine) -> None:
    tables = engine.tables
    named = {c for rule in tables.rules for c in rule.when.concept_ids()}
    named |= {c for floor in tables.floors for c in floor.when.concept_ids()}

    assert NCHS_CONCEPTS & named == set()
    assert all(tables.concepts[cid].risk_factor is None for cid in NCHS_CONCEPTS)


# (text as typed, a concept it must read as current): ED senses of ED shorthand.
ABBREVIATIONS = [
    ("HA", "headache"),
    ("h/a", "headache"),
    ("HA x3d", "headache"),
    ("head ache", "headache"),
    ("headache/dizziness", "headache"),
    ("headache/dizziness", "dizziness"),
    ("AMS", "altered_mental_status"),
    ("ams/confusion", "altered_mental_status"),
    ("confused", "altered_mental_status"),
    ("altered", "altered_mental_status"),
    ("not acting right", "altered_mental_status"),
    ("lethargic", "altered_mental_status"),
    ("change in mental status", "altered_mental_status"),
    ("decreased responsiveness", "altered_mental_status"),
    ("altered MS", "altered_mental_status"),
    ("MS changes", "altered_mental_status"),
    ("MVC +LOC", "syncope"),
    ("CP r/o PE", "chest_pain"),
    ("CP r/o PE", "pulmonary_embolism"),
    ("DIB", "dyspnea"),
    ("no BM x 4 days", "constipation"),
    ("FTT", "weakness"),
    ("NV x2d", "nausea_vomiting"),
    ("vag bleeding", "vaginal_bleeding"),
    ("SROM", "obstetric_emergency"),
    ("hyperK", "dialysis_problem"),
    ("abscess, needs I&D", "abscess_drainage"),
    ("PTSD", "psychiatric"),
    ("HIV exposure", "hiv_concern"),
    ("DOA", "cardiac_arrest"),
]


@pytest.mark.parametrize(("text", "concept"), ABBREVIATIONS, ids=[f"{t} -> {c}" for t, c in ABBREVIATIONS])
def test_ed_shorthand_reads_in_its_ed_sense(engine: RulesEngine, text: str, concept: str) -> None:
    mentions = engine.read(validate_case(make_case(text, "40y"))).mentions

    assert concept in mentions, mentions
