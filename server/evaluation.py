"""Evaluates the triage pipeline against labelled triage data.

Runs named datasets (server/datasets.py: the MIMIC-IV-ED demo and NHAMCS ED
2016-2021, per year and as the training and test aggregates) or a MIMIC-IV-ED
style CSV through the same validation and pipeline as the server, under a
given runtime configuration, and reports per set:

- agreement with the nurse's level: exact, within one level, quadratic-weighted kappa,
  under- and over-triage, ESI 1-2 sensitivity and shares, a confusion matrix;
- resources: the engine's predicted count (classes 0 / 1 / 2+) against the ESI
  resources the visit actually used, over the visits that reached decision
  point C (a level settled at A or B predicts no resources);
- critical outcomes: of the visits that ended in ICU, death in the ED or a
  complex procedure, the share put at ESI 1-2 by the engine and by the nurse.

The labels are a nurse's or a hospital's rating, not truth: agreement measures
agreement with them. Read the per-level rows, not only the headline.
"""

from __future__ import annotations

import asyncio
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from server.datasets import (
    MIMIC_CSV,
    NHAMCS_CSV,
    NHAMCS_TEST_YEARS,
    NHAMCS_TRAINING_YEARS,
    LabelledVisit,
    mimic_visits,
    nhamcs_visits,
)
from server.domain import STEP_RESOURCES
from server.errors import InvalidArgument
from server.esi.engine import RulesEngine
from server.pipeline.pipeline import Pipeline
from server.runtime_config import RuntimeConfig
from server.services.convert import config_message, config_values
from server.validation import validate_case
from triage_client.cli import _assign as assign_config
from triage_client.cli import config_lines

LEVELS = (1, 2, 3, 4, 5)
# ESI 1-2: the patients who should not wait.
URGENT = 2
Who = Literal["engine", "nurse"]
# Resource classes: 0, 1, 2 or more (ESI only tells 0, 1 and "many" apart).
RESOURCE_CLASSES = ("0", "1", "2+")

NURSE_LABELS = "the triage nurse's ESI level"
HOSPITAL_LABELS = "the hospital's triage level (NCHS 1-5; not every ED uses ESI)"
CRITICAL_OUTCOME = "ICU, death in the ED, intubation, central line, CPR or BiPAP"


@dataclass(frozen=True)
class Dataset:
    """A named evaluation set."""

    name: str
    title: str
    labels: str
    # NHAMCS years it is made of; empty for the MIMIC-IV-ED demo.
    years: tuple[int, ...] = ()


def _years(years: Sequence[int]) -> str:
    return f"{years[0]}-{years[-1]}" if len(years) > 1 else str(years[0])


NHAMCS_YEARS = tuple(sorted({*NHAMCS_TRAINING_YEARS, *NHAMCS_TEST_YEARS}))
DATASETS: dict[str, Dataset] = {
    "mimic-demo": Dataset("mimic-demo", "MIMIC-IV-ED demo (one Boston ED)", NURSE_LABELS),
    **{
        f"nhamcs-{year}": Dataset(f"nhamcs-{year}", f"NHAMCS ED {year}", HOSPITAL_LABELS, (year,))
        for year in NHAMCS_YEARS
    },
    "nhamcs-train": Dataset(
        "nhamcs-train",
        f"NHAMCS ED {_years(NHAMCS_TRAINING_YEARS)} (training: thresholds and tables are chosen here)",
        HOSPITAL_LABELS,
        NHAMCS_TRAINING_YEARS,
    ),
    "nhamcs-test": Dataset(
        "nhamcs-test",
        f"NHAMCS ED {_years(NHAMCS_TEST_YEARS)} (held out: the figures to report)",
        HOSPITAL_LABELS,
        NHAMCS_TEST_YEARS,
    ),
}


@dataclass
class Evaluation:
    """What the pipeline said about a set of labelled visits, as counts.

    Counts only, so results add up: the result for two sets of visits is the
    sum of their results (`a + b`), which is how the NHAMCS aggregates are
    made from the years.
    """

    # (nurse, engine) levels of every evaluated visit.
    pairs: Counter[tuple[int, int]] = field(default_factory=Counter)
    # (resources used, engine's prediction) as classes 0, 1, 2 (2 or more),
    # for evaluated visits that reached decision point C and have a count.
    resource_pairs: Counter[tuple[int, int]] = field(default_factory=Counter)
    # (nurse, engine) levels of evaluated visits with a critical outcome.
    critical_pairs: Counter[tuple[int, int]] = field(default_factory=Counter)
    rows: int = 0
    # Visits without a nurse level: skipped.
    unlabelled: int = 0
    # Visits the service would refuse (INVALID_ARGUMENT), such as an empty complaint: skipped.
    rejected: int = 0
    # Implausible vital signs dropped from the evaluated visits.
    values_dropped: int = 0
    # Evaluated visits settled at A or B: no resources predicted.
    decided_before_c: int = 0
    # Evaluated visits that reached C but whose resources used are unknown.
    resources_unknown: int = 0
    # Evaluated visits whose outcome is known (critical or not).
    outcomes_known: int = 0

    def __add__(self, other: Evaluation) -> Evaluation:
        if not isinstance(other, Evaluation):
            return NotImplemented
        return Evaluation(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def record(self, visit: LabelledVisit, engine_level: int, predicted_resources: int | None) -> None:
        """Counts one evaluated visit; `predicted_resources` is None when the pipeline stopped before C."""
        assert visit.nurse_level is not None
        self.pairs[(visit.nurse_level, engine_level)] += 1
        self.values_dropped += visit.values_dropped
        if predicted_resources is None:
            self.decided_before_c += 1
        elif visit.resources_used is None:
            self.resources_unknown += 1
        else:
            self.resource_pairs[(min(visit.resources_used, 2), min(predicted_resources, 2))] += 1
        if visit.critical_outcome is not None:
            self.outcomes_known += 1
        if visit.critical_outcome:
            self.critical_pairs[(visit.nurse_level, engine_level)] += 1

    @property
    def total(self) -> int:
        """n: the visits evaluated (with a nurse level, accepted by validation)."""
        return sum(self.pairs.values())

    def rate(self, outcome: Literal["agree", "under", "over", "within_one"]) -> float | None:
        """Share of visits where the engine agrees, is less urgent (under), more urgent (over), or within one."""
        hits = sum(n for (nurse, engine), n in self.pairs.items() if _outcome(nurse, engine, outcome))
        return _share(hits, self.total)

    def quadratic_kappa(self) -> float | None:
        """Cohen's kappa with quadratic weights, the usual statistic for ordinal triage scales."""
        total = self.total
        if not total:
            return None
        nurse: Counter[int] = Counter()
        engine: Counter[int] = Counter()
        for (a, b), n in self.pairs.items():
            nurse[a] += n
            engine[b] += n
        observed = expected = 0.0
        for a in LEVELS:
            for b in LEVELS:
                weight = (a - b) ** 2 / (len(LEVELS) - 1) ** 2
                observed += weight * self.pairs[(a, b)] / total
                expected += weight * nurse[a] * engine[b] / total**2
        return 1 - observed / expected if expected else 1.0

    @property
    def nurse_urgent(self) -> int:
        """Evaluated visits the nurse put at ESI 1-2."""
        return sum(n for (nurse, _), n in self.pairs.items() if nurse <= URGENT)

    def urgent_sensitivity(self) -> float | None:
        """Of the visits the nurse put at ESI 1-2, the share the engine also put at 1-2."""
        hits = sum(n for (nurse, engine), n in self.pairs.items() if nurse <= URGENT and engine <= URGENT)
        return _share(hits, self.nurse_urgent)

    def urgent_share(self, who: Who) -> float | None:
        """Share of all evaluated visits put at ESI 1-2 by the engine or by the nurse."""
        return _urgent_share(self.pairs, who)

    @property
    def resources_total(self) -> int:
        """n of resource agreement: evaluated visits that reached C and have a recorded count."""
        return sum(self.resource_pairs.values())

    def resource_rate(self, outcome: Literal["agree", "fewer", "more"]) -> float | None:
        """Share of those visits whose predicted class equals, is below or is above the class used."""
        compare = {"agree": operator.eq, "fewer": operator.lt, "more": operator.gt}[outcome]
        hits = sum(n for (used, predicted), n in self.resource_pairs.items() if compare(predicted, used))
        return _share(hits, self.resources_total)

    @property
    def critical_total(self) -> int:
        return sum(self.critical_pairs.values())

    def critical_capture(self, who: Who) -> float | None:
        """Of the visits with a critical outcome, the share put at ESI 1-2 by the engine or by the nurse."""
        return _urgent_share(self.critical_pairs, who)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "n": self.total,
            "unlabelled": self.unlabelled,
            "rejected": self.rejected,
            "values_dropped": self.values_dropped,
            "exact_agreement": _round(self.rate("agree")),
            "within_one_level": _round(self.rate("within_one")),
            "quadratic_weighted_kappa": _round(self.quadratic_kappa()),
            "under_triage": _round(self.rate("under")),
            "over_triage": _round(self.rate("over")),
            "esi_1_2": {
                "nurse_1_2": self.nurse_urgent,
                "sensitivity": _round(self.urgent_sensitivity()),
                "engine_share": _round(self.urgent_share("engine")),
                "nurse_share": _round(self.urgent_share("nurse")),
            },
            # Rows are the nurse's level 1-5, each a list of the engine's 1-5.
            "confusion_matrix": {f"nurse_esi_{a}": [self.pairs[(a, b)] for b in LEVELS] for a in LEVELS},
            "resources": {
                "n": self.resources_total,
                "decided_before_c": self.decided_before_c,
                "resources_unknown": self.resources_unknown,
                "agreement": _round(self.resource_rate("agree")),
                "engine_fewer": _round(self.resource_rate("fewer")),
                "engine_more": _round(self.resource_rate("more")),
                # Rows are the resources used (0, 1, 2+), each a list of the engine's prediction (0, 1, 2+).
                "table": {
                    f"used_{name}": [self.resource_pairs[(used, predicted)] for predicted in range(3)]
                    for used, name in enumerate(RESOURCE_CLASSES)
                },
            },
            "critical_outcome": {
                "n": self.critical_total,
                "outcomes_known": self.outcomes_known,
                "engine_esi_1_2": _round(self.critical_capture("engine")),
                "nurse_esi_1_2": _round(self.critical_capture("nurse")),
            },
        }

    def report(self, dataset: Dataset) -> str:
        """A compact text block for one set."""
        pct = _percent
        lines = [
            f"== {dataset.name}: {dataset.title} ==",
            f"labels: {dataset.labels}; a rating to compare with, not the truth",
            f"visits {self.rows:,}: evaluated {self.total:,} (n), without a level {self.unlabelled:,}, "
            f"refused by validation {self.rejected:,}; implausible vital signs dropped {self.values_dropped:,}",
            f"exact agreement {pct(self.rate('agree'))}   within one level {pct(self.rate('within_one'))}   "
            f"quadratic-weighted kappa {_fixed(self.quadratic_kappa())}",
            f"under-triage (engine less urgent than the nurse) {pct(self.rate('under'))}   "
            f"over-triage (more urgent) {pct(self.rate('over'))}",
            f"ESI 1-2 sensitivity {pct(self.urgent_sensitivity())} (engine also at 1-2, of {self.nurse_urgent:,} "
            f"the nurse put at 1-2); all visits at 1-2: engine {pct(self.urgent_share('engine'))}, "
            f"nurse {pct(self.urgent_share('nurse'))}",
            "confusion matrix: rows are the nurse's level, columns the engine's",
            "        " + "".join(f"{'ESI ' + str(b):>8}" for b in LEVELS) + f"{'total':>8}   agree  under   over",
        ]
        for a in LEVELS:
            row = [self.pairs[(a, b)] for b in LEVELS]
            total = sum(row)
            under = sum(row[b - 1] for b in LEVELS if b > a)
            over = sum(row[b - 1] for b in LEVELS if b < a)
            lines.append(
                f"  ESI {a} "
                + "".join(f"{n:>8,}" for n in row)
                + f"{total:>8,}  {_whole(row[a - 1], total):>6} {_whole(under, total):>6} {_whole(over, total):>6}"
            )
        if self.resources_total:
            lines += [
                f"resources 0 / 1 / 2+, engine's prediction against resources used, n {self.resources_total:,}: "
                "only visits that reached decision point C",
                f"  ({self.decided_before_c:,} settled at A or B predict no resources and "
                f"{self.resources_unknown:,} have no recorded count: left out)",
                f"  agreement {pct(self.resource_rate('agree'))}   engine predicted fewer "
                f"{pct(self.resource_rate('fewer'))}   more {pct(self.resource_rate('more'))}",
                "          " + "".join(f"{'engine ' + name:>11}" for name in RESOURCE_CLASSES) + f"{'total':>8}",
            ]
            for used, name in enumerate(RESOURCE_CLASSES):
                row = [self.resource_pairs[(used, predicted)] for predicted in range(3)]
                lines.append(f"  used {name:<3} " + "".join(f"{n:>11,}" for n in row) + f"{sum(row):>8,}")
        else:
            lines.append("resources used: not recorded in this set")
        if self.outcomes_known:
            lines.append(
                f"critical outcome ({CRITICAL_OUTCOME}), n {self.critical_total:,}: "
                f"at ESI 1-2 engine {pct(self.critical_capture('engine'))}, "
                f"nurse {pct(self.critical_capture('nurse'))}"
            )
        else:
            lines.append("critical outcomes: not recorded in this set")
        return "\n".join(lines)


def _outcome(nurse: int, engine: int, outcome: str) -> bool:
    # ESI 1 is the most urgent: a higher engine level is under-triage.
    if outcome == "agree":
        return engine == nurse
    if outcome == "under":
        return engine > nurse
    if outcome == "over":
        return engine < nurse
    return abs(engine - nurse) <= 1


def _urgent_share(pairs: Counter[tuple[int, int]], who: Who) -> float | None:
    index = 1 if who == "engine" else 0
    return _share(sum(n for pair, n in pairs.items() if pair[index] <= URGENT), sum(pairs.values()))


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _whole(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def runtime_config(assignments: Iterable[str], base: RuntimeConfig | None = None) -> RuntimeConfig:
    """`base` (the default configuration) with KEY=VALUE changes, as `triage admin config set` takes them.

    The parsing is the client's and the conversion the server's, so a setting
    means the same here as on a running server. ValueError names a bad one.
    """
    message = config_message(base if base is not None else RuntimeConfig())
    for assignment in assignments:
        try:
            assign_config(message, assignment)
        except ValueError as error:
            raise ValueError(f"--config {assignment!r}: {error}") from None
    try:
        return RuntimeConfig.model_validate(config_values(message))
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"--config: {error}") from None


def config_settings(config: RuntimeConfig) -> list[str]:
    """The settings that steer a classification, in the KEY=VALUE vocabulary of --config."""
    keep = ("step.", "strategy.", "danger_zone_policy=")
    return [line for line in config_lines(config_message(config)) if line.startswith(keep)]


class Evaluator:
    """Runs visits through one pipeline under one runtime configuration."""

    def __init__(self, config: RuntimeConfig | None = None, pipeline: Pipeline | None = None) -> None:
        self.config = config if config is not None else RuntimeConfig()
        self.pipeline = (
            pipeline
            if pipeline is not None
            else Pipeline(RulesEngine(), danger_zone_policy=self.config.danger_zone_policy)
        )

    async def add(self, result: Evaluation, visit: LabelledVisit) -> None:
        """Classifies `visit` as the service would and counts it in `result`."""
        result.rows += 1
        if visit.nurse_level not in LEVELS:
            result.unlabelled += 1
            return
        try:
            case = validate_case(visit.case)
        except InvalidArgument:
            result.rejected += 1
            return
        steps = [step async for step in self.pipeline.steps(case, self.config)]
        classified = self.pipeline.result(steps)
        reached_c = any(step.step == STEP_RESOURCES for step in steps)
        result.record(visit, classified.esi_level, classified.resource_count if reached_c else None)

    async def evaluate(self, visits: Iterable[LabelledVisit]) -> Evaluation:
        result = Evaluation()
        for visit in visits:
            await self.add(result, visit)
        return result


def evaluate_visits(visits: Iterable[LabelledVisit], config: RuntimeConfig | None = None) -> Evaluation:
    """The evaluation of `visits` under `config` (the default configuration when None)."""
    return asyncio.run(Evaluator(config).evaluate(visits))


def evaluate_csv(path: Path, config: RuntimeConfig | None = None) -> Evaluation:
    """The evaluation of a CSV in the layout of MIMIC-IV-ED's triage_with_age.csv."""
    return evaluate_visits(mimic_visits(path), config)


def csv_dataset(path: Path) -> Dataset:
    return Dataset(str(path), "MIMIC-IV-ED style CSV", NURSE_LABELS)


@dataclass
class Report:
    """The evaluations of one run, with what produced them."""

    datasets: list[Dataset]
    results: dict[str, Evaluation]
    ruleset_version: str
    config: RuntimeConfig

    def text(self) -> str:
        header = [
            f"ruleset {self.ruleset_version}; configuration: {' '.join(config_settings(self.config))}",
            "Labels are a nurse's or a hospital's triage level, not the truth: agreement means agreeing with them.",
        ]
        return "\n\n".join(["\n".join(header), *(self.results[d.name].report(d) for d in self.datasets)])

    def as_dict(self) -> dict[str, object]:
        tracking = {"ruleset_version": self.ruleset_version, "config": self.config.model_dump(mode="json")}
        return {
            d.name: {"dataset": d.title, "labels": d.labels, **self.results[d.name].as_dict(), **tracking}
            for d in self.datasets
        }


async def _run(
    datasets: Sequence[Dataset],
    csv_paths: Sequence[Path],
    evaluator: Evaluator,
    mimic_path: Path,
    nhamcs_path: Path,
) -> dict[str, Evaluation]:
    results: dict[str, Evaluation] = {}
    for path in csv_paths:
        results[str(path)] = await evaluator.evaluate(mimic_visits(path))
    if any(d.name == "mimic-demo" for d in datasets):
        results["mimic-demo"] = await evaluator.evaluate(mimic_visits(mimic_path))
    # NHAMCS is read once; every NHAMCS set is the sum of its years.
    years = sorted({year for d in datasets for year in d.years})
    if years:
        by_year = {year: Evaluation() for year in years}
        for visit in nhamcs_visits(nhamcs_path, years):
            assert visit.year is not None
            await evaluator.add(by_year[visit.year], visit)
        for d in datasets:
            if d.years:
                results[d.name] = sum((by_year[year] for year in d.years), Evaluation())
    return results


def run(
    names: Sequence[str] = tuple(DATASETS),
    config: RuntimeConfig | None = None,
    *,
    csv_paths: Sequence[Path] = (),
    mimic_path: Path = MIMIC_CSV,
    nhamcs_path: Path = NHAMCS_CSV,
) -> Report:
    """Evaluates the named datasets (KeyError for an unknown name) and CSV files under `config`."""
    datasets = [csv_dataset(path) for path in csv_paths] + [DATASETS[name] for name in dict.fromkeys(names)]
    evaluator = Evaluator(config)
    results = asyncio.run(_run(datasets, csv_paths, evaluator, mimic_path, nhamcs_path))
    return Report(datasets, results, evaluator.pipeline.engine.version, evaluator.config)
