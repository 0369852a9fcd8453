"""Fits the learned estimates on NHAMCS 2016-2018 and exports them as JSON.

    pip install -c constraints.txt -e '.[train]'
    python -m server.learned.train        # writes server/learned/data/model.json (about 1-2 minutes)

Options: --high-risk-share (0.10), --min-count (10), --limit N (the first N
visits of each year set, for tests), --output-dir, --data.

Needs the `train` extra (scikit-learn), imported here only: the server never
imports this module and serves the exported coefficients in plain Python
(server/learned/estimates.py). The features come from the complaint reader,
so retrain whenever the clinical tables change; the model records the tables
version it was trained with (`training.tables_version`).

What it does:

1. Reads the NHAMCS visits of the training years (2016-2018) and, for the
   report only, of the test years (2020-2021) as `nhamcs_visit` reads them. Every
   visit goes through `validate_case`, `RulesEngine().read` and `features`,
   the path a request takes, so the reasons for visit are read by the service's
   own complaint reader.
2. Critical outcome (ICU admission, death in the ED, intubation, central line,
   CPR, BiPAP/CPAP): an L2-regularized logistic regression on the visits whose
   outcome is known. Resources (0, 1 or 2 or more ESI resources as triage
   anticipated them, ANTICIPATED_RESOURCES: the count the hospital's level
   5, 4 or 3 stands for at decision point C): an L2-regularized multinomial
   logistic regression on the visits at those levels.
3. The regularization strength C of each model (0.01, 0.03, 0.1, 0.3 or 1)
   is the one with the lowest pooled out-of-fold log loss in stratified
   5-fold cross-validation on the training years (a proper score: the
   probabilities are shown to nurses, so calibration matters, not only
   ranking). The model is then refitted on all training visits. The test
   years are never used for a choice.
4. Coefficients are rounded to 6 decimals and features whose weights all
   round to zero are dropped; the rounded coefficients are written back into
   the fitted models, so every metric is that of the exported model.
5. The B threshold: the probability at or above which the top
   `--high-risk-share` (default 10 %) of training visits fall under the
   exported model, and a table of thresholds for shares 2-30 % (with the
   training sensitivity and positive predictive value at each), so that another
   threshold can be chosen later from training figures without refitting.

Choices:

- Suspect hospital-years are kept for the critical outcome (its label is
  not a triage level), and left out of the resource model (whose label is:
  their flag says those levels run against the resources used).
- Resources: the label is what triage anticipates, not what the visit went
  on to use. ESI's question at C is the nurse's anticipation, and the two
  differ: on 2016-2018, setting C from the resources each visit actually used
  would agree with the hospitals' levels on 43 % of visits, against 50.8 %
  for the model of resources used and 52-53 % for this one (the choice was
  made on the training years; agreement with the resources used is kept in
  the test metrics, `resources_used_accuracy`).
- Visits are unweighted (no `patwt`): the model estimates a visit's risk, not
  a national total.
- Features seen in fewer than `--min-count` (10) training visits (a concept,
  in the resource model: MIN_RESOURCE_CONCEPT_COUNT, 20) are left out. Tried and left out because they did
  not clearly help (cross-validated AUC within 0.002): the engine's vital-sign
  states, age >= 65 x concept interactions, the number of concepts, the rules
  engine's resource count.
- Resources: the estimate is the most likely class. On the test years it is
  more often right than the median class or the rounded expected count, and
  less often too low (which would under-triage); the figures are in the
  model's test metrics.

Same inputs (data, clinical tables, scikit-learn version) give a
byte-identical file: fixed folds (random_state 0), a deterministic solver
(lbfgs on a sparse matrix, one BLAS and OpenMP thread, tight tolerance), sorted
keys, rounded numbers, no times or paths in the output.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import math
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from server.datasets import NHAMCS_CSV, NHAMCS_TEST_YEARS, NHAMCS_TRAINING_YEARS, RFV_SEPARATOR, nhamcs_visit
from server.esi.engine import RulesEngine
from server.learned.estimates import FORMAT, MODEL_FILE, RESOURCE_CLASSES, percent
from server.learned.features import CONCEPT, family, features, group
from server.validation import validate_case

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "data"
DIGITS = 6
RANDOM_STATE = 0
FOLDS = 5
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
MIN_COUNT = 10
# In the resource model a concept needs more: most visits give several
# reasons, so a rare concept's weight there mostly carries the other reasons
# it came with (11 training visits with "Sunburn, windburn", 10 of them beside
# other reasons, made sunburn two or more resources). Chosen by cross-validated
# log loss on 2016-2018: resources 0.71630 at 20, 0.71634 at 10, 0.71649 at
# 30; the critical outcome is better at 10 (0.087082 against 0.087098 at 20),
# so its rare concepts (an interfacility transfer) keep their weight.
MIN_RESOURCE_CONCEPT_COUNT = 20
HIGH_RISK_SHARE = 0.10
SHARES = tuple(round(0.02 + 0.01 * i, 2) for i in range(29))  # 0.02 ... 0.30
MAX_ITER = 5000
TOLERANCE = 1e-6
CRITICAL_DEFINITION = (
    "ICU admission, death in the ED, or a complex procedure (intubation, central line, CPR, BiPAP/CPAP)"
)
RESOURCES_DEFINITION = (
    "ESI resources as triage anticipated them: none, one, or two or more for a visit the hospital put at level 5, 4"
    " or 3 (levels 1-2 and hospital-years whose scale runs backwards are left out)"
)
# The count each triage level below 1-2 stands for in ESI (decision point C).
ANTICIPATED_RESOURCES = {5: 0, 4: 1, 3: 2}


@dataclass(frozen=True, slots=True)
class Example:
    """One visit as the models see it, with its labels."""

    features: tuple[str, ...]
    critical: bool | None
    # ESI resources used: 0, 1 or 2 (two or more); None when unknown.
    resources: int | None
    # The count the hospital's triage level stands for at C (ANTICIPATED_RESOURCES); None at
    # levels 1-2, without a level, or in a hospital-year whose triage scale is suspect.
    anticipated: int | None
    # The first reason for visit, for the per-complaint baseline.
    complaint: str
    # The rules engine's resource count at C, capped at 2, for comparison.
    rules_resources: int


@dataclass
class Fitted:
    """A fitted model with the figures that chose it."""

    estimator: Any
    c: float
    # The cross-validated scores of each C tried.
    cv: list[dict[str, float]]
    folds: int


@dataclass
class TrainingRun:
    """What `run` produced: the document written, and the fitted scikit-learn models."""

    document: dict[str, Any]
    path: Path
    vocabulary: list[str]
    # The resource model's features: the vocabulary less its rarer concepts.
    resources_vocabulary: list[str]
    critical: Fitted
    resources: Fitted
    train: list[Example]
    test: list[Example]
    report: list[str] = field(default_factory=list)

    def matrix(self, examples: Sequence[Example], vocabulary: Sequence[str] | None = None) -> Any:
        """The examples as the critical model's input (or as that of the model with `vocabulary`)."""
        return _matrix(examples, {f: i for i, f in enumerate(vocabulary or self.vocabulary)})


def read_examples(
    years: Iterable[int], limit: int | None = None, path: Path = NHAMCS_CSV, engine: RulesEngine | None = None
) -> list[Example]:
    """The visits of these years read as the service reads a request (the first `limit` only, if given)."""
    engine = engine or RulesEngine()
    examples = []
    for row in islice(_rows(path, frozenset(years)), limit):
        visit = nhamcs_visit(row)
        facts = engine.read(validate_case(visit.case))
        # A suspect hospital-year's levels run against its resource use: no anticipated count from them.
        level = None if row.get("triage_scale_suspect") == "1" else visit.nurse_level
        examples.append(
            Example(
                features=tuple(features(facts)),
                critical=visit.critical_outcome,
                resources=None if visit.resources_used is None else min(visit.resources_used, 2),
                anticipated=None if level is None else ANTICIPATED_RESOURCES.get(level),
                complaint=visit.case.chief_complaint.split(RFV_SEPARATOR)[0],
                rules_resources=min(engine.resources(facts, "").resource_count, 2),
            )
        )
    return examples


def _rows(path: Path, years: frozenset[int]) -> Iterator[dict[str, str]]:
    """The NHAMCS rows of these years, suspect hospital-years included (their flag is read per row)."""
    with gzip.open(path, "rt", newline="") as handle:
        yield from (row for row in csv.DictReader(handle) if int(row["year"]) in years)


def vocabulary(examples: Iterable[Example], min_count: int) -> tuple[list[str], dict[str, int]]:
    counts = Counter(f for e in examples for f in e.features)
    kept = sorted(f for f, n in counts.items() if n >= min_count)
    return kept, {f: counts[f] for f in kept}


def _matrix(examples: Sequence[Example], index: dict[str, int]) -> Any:
    import numpy as np
    from scipy.sparse import csr_matrix

    columns: list[int] = []
    pointers = [0]
    for example in examples:
        columns.extend(sorted({index[f] for f in example.features if f in index}))
        pointers.append(len(columns))
    return csr_matrix(
        (np.ones(len(columns)), np.array(columns, dtype=np.int64), np.array(pointers, dtype=np.int64)),
        shape=(len(examples), len(index)),
    )


def _fit(x: Any, y: Any, c: float, warm: Any = None) -> Any:
    """A logistic regression fitted with lbfgs; from `warm`'s coefficients when given (same result, fewer steps)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    estimator = warm if warm is not None else LogisticRegression(max_iter=MAX_ITER, tol=TOLERANCE, warm_start=True)
    estimator.set_params(C=c)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return estimator.fit(x, y)


def _score(y: Any, p: Any, classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    scores = {"log_loss": float(log_loss(y, p, labels=list(range(classes))))}
    if classes == 2:
        scores["auc"] = float(roc_auc_score(y, p[:, 1]))
    else:
        scores["accuracy"] = float(accuracy_score(y, p.argmax(axis=1)))
    return scores


def choose_and_fit(x: Any, y: Any, classes: int, folds: int, grid: Sequence[float]) -> Fitted:
    """Chooses C by pooled out-of-fold log loss, then refits on all rows."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(y, minlength=classes).min())
    folds = min(folds, smallest)
    if folds < 2:
        raise SystemExit(f"too few examples of a class ({smallest}) to cross-validate")
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=RANDOM_STATE).split(x, y))
    grid = sorted(grid)
    held_out_p = {c: np.zeros((x.shape[0], classes)) for c in grid}
    for fit_rows, held_out in splits:
        # Along the grid from the strongest regularization, each fit starting
        # from the last: the optimum is unique, only the path is shorter.
        estimator = None
        for c in grid:
            estimator = _fit(x[fit_rows], y[fit_rows], c, estimator)
            held_out_p[c][held_out] = estimator.predict_proba(x[held_out])
    table = [{"c": c, **_score(y, held_out_p[c], classes)} for c in grid]
    # Ties go to the smaller C (the stronger regularization).
    best = min(table, key=lambda scores: (scores["log_loss"], scores["c"]))
    return Fitted(_fit(x, y, best["c"]), best["c"], table, folds)


def _round(value: float) -> float:
    rounded = round(float(value), DIGITS)
    return rounded + 0.0  # no -0.0


def export_model(fitted: Fitted, vocab: Sequence[str], x: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Rounds the coefficients, writes them back into the estimator, and returns them as JSON data."""
    import numpy as np

    estimator = fitted.estimator
    coef = np.vectorize(_round)(estimator.coef_)
    intercept = np.vectorize(_round)(estimator.intercept_)
    estimator.coef_ = coef
    estimator.intercept_ = intercept
    weights = {feature: [float(v) for v in coef[:, j]] for j, feature in enumerate(vocab) if np.any(coef[:, j] != 0)}
    # Each group's weight in an average training visit: contributions are measured against it.
    means = np.asarray(x.mean(axis=0)).ravel()
    baselines: dict[str, Any] = defaultdict(lambda: np.zeros(coef.shape[0]))
    for j, feature in enumerate(vocab):
        if feature in weights:
            baselines[group(feature)] = baselines[group(feature)] + coef[:, j] * means[j]
    return {
        "classes": list(classes),
        "intercepts": [float(v) for v in intercept],
        "weights": weights,
        "baselines": {g: [_round(v) for v in b] for g, b in sorted(baselines.items())},
    }


def threshold_table(p: Any, y: Any) -> list[dict[str, float]]:
    """For each share, the probability at or above which that share of the visits fall."""
    import numpy as np

    ordered = np.sort(p)[::-1]
    rows = []
    for share in SHARES:
        k = max(1, math.ceil(share * len(ordered) - 1e-9))
        threshold = math.floor(float(ordered[k - 1]) * 10**DIGITS) / 10**DIGITS
        rows.append({"share": share, "threshold": threshold, **_at_threshold(p, y, threshold)})
    return rows


def _at_threshold(p: Any, y: Any, threshold: float) -> dict[str, float]:
    flagged = p >= threshold
    positives = int(y.sum())
    true_positives = int((flagged & (y == 1)).sum())
    return {
        "flagged": round(float(flagged.mean()), 4),
        "sensitivity": round(true_positives / positives, 4) if positives else 0.0,
        "ppv": round(true_positives / int(flagged.sum()), 4) if flagged.any() else 0.0,
    }


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: v if k == "c" else round(v, 4) for k, v in scores.items()}


def _labels(examples: Sequence[Example], name: str) -> tuple[list[int], list[int]]:
    rows = [i for i, e in enumerate(examples) if getattr(e, name) is not None]
    return rows, [int(getattr(examples[i], name)) for i in rows]


def _complaint_table(train: Sequence[Example], test: Sequence[Example]) -> float:
    """Accuracy on the test years of the most common resource class of each first reason for visit."""
    by_complaint: dict[str, Counter[int]] = defaultdict(Counter)
    overall: Counter[int] = Counter()
    for e in train:
        if e.anticipated is not None:
            by_complaint[e.complaint][e.anticipated] += 1
            overall[e.anticipated] += 1
    default = _most_common(overall)
    known = [e for e in test if e.anticipated is not None]
    right = sum(
        (_most_common(by_complaint[e.complaint]) if e.complaint in by_complaint else default) == e.anticipated
        for e in known
    )
    return right / len(known) if known else 0.0


def _most_common(counts: Counter[int]) -> int:
    # Ties go to the smaller count, deterministically.
    return min(counts, key=lambda k: (-counts[k], k))


def _data_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run(
    output_dir: Path = DEFAULT_OUTPUT_DIR,
    *,
    data: Path = NHAMCS_CSV,
    limit: int | None = None,
    high_risk_share: float = HIGH_RISK_SHARE,
    min_count: int = MIN_COUNT,
    folds: int = FOLDS,
    grid: Sequence[float] = C_GRID,
) -> TrainingRun:
    """Fits both models, writes model.json to output_dir, and returns what it did."""
    from threadpoolctl import threadpool_limits

    share = round(high_risk_share, 2)
    if share not in SHARES:
        raise SystemExit(f"--high-risk-share must be one of {SHARES[0]}-{SHARES[-1]} in steps of 0.01")
    # One BLAS and OpenMP thread: sums in a fixed order give the same bytes on any machine.
    with threadpool_limits(limits=1):
        engine = RulesEngine()
        train = read_examples(NHAMCS_TRAINING_YEARS, limit, data, engine)
        test = read_examples(NHAMCS_TEST_YEARS, limit, data, engine)
        vocab, counts = vocabulary(train, min_count)
        index = {f: i for i, f in enumerate(vocab)}
        x_train, x_test = _matrix(train, index), _matrix(test, index)
        critical, critical_section = _critical_outcome(train, test, x_train, x_test, vocab, share, folds, grid)
        least = max(min_count, MIN_RESOURCE_CONCEPT_COUNT)
        kept = [j for j, f in enumerate(vocab) if family(f) != CONCEPT or counts[f] >= least]
        resources_vocab = [vocab[j] for j in kept]
        resources, resources_section = _resources(
            train, test, x_train[:, kept], x_test[:, kept], resources_vocab, folds, grid
        )
    document: dict[str, Any] = {
        "format": FORMAT,
        "training": _training_section(data, limit, len(train), min_count, grid, engine.version, counts),
        "critical_outcome": critical_section,
        "resources": resources_section,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / MODEL_FILE
    path.write_text(json.dumps(document, sort_keys=True, indent=1) + "\n")
    report = _report(document, len(train), len(test), len(vocab), path)
    return TrainingRun(document, path, vocab, resources_vocab, critical, resources, train, test, report)


def _training_section(
    data: Path,
    limit: int | None,
    visits: int,
    min_count: int,
    grid: Sequence[float],
    tables_version: str,
    counts: dict[str, int],
) -> dict[str, Any]:
    import sklearn

    return {
        "data_file": data.name,
        "data_sha256": _data_sha256(data),
        "training_years": list(NHAMCS_TRAINING_YEARS),
        "test_years": list(NHAMCS_TEST_YEARS),
        "include_suspect": True,
        "limit": limit,
        "visits": visits,
        "min_count": min_count,
        "min_resource_concept_count": max(min_count, MIN_RESOURCE_CONCEPT_COUNT),
        "random_state": RANDOM_STATE,
        "c_grid": list(grid),
        "tables_version": tables_version,
        "sklearn_version": sklearn.__version__,
        "feature_counts": counts,
    }


def _critical_outcome(
    train: Sequence[Example],
    test: Sequence[Example],
    x_train: Any,
    x_test: Any,
    vocab: Sequence[str],
    share: float,
    folds: int,
    grid: Sequence[float],
) -> tuple[Fitted, dict[str, Any]]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rows, labels = _labels(train, "critical")
    y = np.array(labels)
    fitted = choose_and_fit(x_train[rows], y, 2, folds, grid)
    model = export_model(fitted, vocab, x_train[rows], ("no", "yes"))
    p_train = fitted.estimator.predict_proba(x_train[rows])[:, 1]
    thresholds = threshold_table(p_train, y)
    threshold = next(row["threshold"] for row in thresholds if row["share"] == share)
    test_rows, test_labels = _labels(test, "critical")
    y_test = np.array(test_labels)
    p_test = fitted.estimator.predict_proba(x_test[test_rows])
    chosen = next(s for s in fitted.cv if s["c"] == fitted.c)
    metrics = {
        "cross_validation": {"folds": fitted.folds, **_rounded(chosen)},
        "cross_validation_grid": [_rounded(s) for s in fitted.cv],
        "training": {"auc": round(float(roc_auc_score(y, p_train)), 4), **_at_threshold(p_train, y, threshold)},
        "test": {
            "years": list(NHAMCS_TEST_YEARS),
            "n": len(test_rows),
            "positives": int(y_test.sum()),
            **(_rounded(_score(y_test, p_test, 2)) if len(set(test_labels)) == 2 else {}),
            **_at_threshold(p_test[:, 1], y_test, threshold),
        },
    }
    return fitted, {
        "definition": CRITICAL_DEFINITION,
        "n": len(rows),
        "positives": int(y.sum()),
        "model": model,
        "high_risk_share": share,
        "high_risk_threshold": threshold,
        "thresholds": thresholds,
        "metrics": metrics,
    }


def _resources(
    train: Sequence[Example],
    test: Sequence[Example],
    x_train: Any,
    x_test: Any,
    vocab: Sequence[str],
    folds: int,
    grid: Sequence[float],
) -> tuple[Fitted, dict[str, Any]]:
    import numpy as np
    from sklearn.metrics import confusion_matrix

    rows, labels = _labels(train, "anticipated")
    y = np.array(labels)
    fitted = choose_and_fit(x_train[rows], y, 3, folds, grid)
    model = export_model(fitted, vocab, x_train[rows], RESOURCE_CLASSES)
    test_rows, test_labels = _labels(test, "anticipated")
    y_test = np.array(test_labels)
    p_test = fitted.estimator.predict_proba(x_test[test_rows])
    predicted = p_test.argmax(axis=1)
    # Two other ways to turn the probabilities into a count, for comparison.
    median = (np.cumsum(p_test, axis=1) < 0.5).sum(axis=1)
    expected = np.clip(np.rint(p_test @ np.array([0.0, 1.0, 2.0])), 0, 2)
    chosen = next(s for s in fitted.cv if s["c"] == fitted.c)
    majority = _most_common(Counter(labels))
    rules = [test[i].rules_resources == test[i].anticipated for i in test_rows]
    # Against the resources the visits went on to use (a different quantity: what triage anticipates is the target).
    used = [(int(predicted[k]), test[i].resources) for k, i in enumerate(test_rows) if test[i].resources is not None]
    metrics = {
        "cross_validation": {"folds": fitted.folds, **_rounded(chosen)},
        "cross_validation_grid": [_rounded(s) for s in fitted.cv],
        "test": {
            "years": list(NHAMCS_TEST_YEARS),
            "n": len(test_rows),
            **_rounded(_score(y_test, p_test, 3)),
            "too_low": _share(predicted < y_test),
            "confusion_true_by_predicted": confusion_matrix(y_test, predicted, labels=[0, 1, 2]).tolist(),
            "median_class_accuracy": _share(median == y_test),
            "median_class_too_low": _share(median < y_test),
            "rounded_expected_accuracy": _share(expected == y_test),
            "baseline_majority_class_accuracy": _share(y_test == majority),
            "baseline_complaint_table_accuracy": round(_complaint_table(train, test), 4),
            "baseline_rules_engine_accuracy": round(sum(rules) / len(rules), 4) if rules else 0.0,
            "resources_used_accuracy": round(sum(p == u for p, u in used) / len(used), 4) if used else 0.0,
        },
    }
    return fitted, {
        "definition": RESOURCES_DEFINITION,
        "n": len(rows),
        "class_counts": dict(zip(RESOURCE_CLASSES, np.bincount(y, minlength=3).tolist(), strict=True)),
        "model": model,
        "decision": "most likely class",
        "metrics": metrics,
    }


def _share(mask: Any) -> float:
    return round(float(mask.mean()), 4) if len(mask) else 0.0


def _report(document: dict[str, Any], train: int, test: int, vocabulary: int, path: Path) -> list[str]:
    training = document["training"]
    critical, resources = document["critical_outcome"], document["resources"]
    cm, rm = critical["metrics"], resources["metrics"]
    ct, rt = cm["test"], rm["test"]
    used = set(critical["model"]["weights"]) | set(resources["model"]["weights"])
    threshold = critical["high_risk_threshold"]
    return [
        f"read {train} training visits {NHAMCS_TRAINING_YEARS} and {test} test visits {NHAMCS_TEST_YEARS}",
        f"features: {vocabulary} seen in >= {training['min_count']} training visits (a concept in the resource"
        f" model: >= {training['min_resource_concept_count']}), {len(used)} with a weight",
        f"critical outcome: {critical['positives']} of {critical['n']} training visits;"
        f" C={cm['cross_validation']['c']}: cross-validated AUC {cm['cross_validation']['auc']}"
        f" (log loss {cm['cross_validation']['log_loss']}); test AUC {ct.get('auc')} on {ct['n']} visits"
        f" ({ct['positives']} critical)",
        f"  B threshold {threshold} ({percent(threshold)}) flags {percent(critical['high_risk_share'])} of training"
        f" visits: sensitivity {cm['training']['sensitivity']}, PPV {cm['training']['ppv']};"
        f" test: flags {ct['flagged']}, sensitivity {ct['sensitivity']}, PPV {ct['ppv']}",
        f"resources 0/1/2+: {resources['n']} training visits; C={rm['cross_validation']['c']}: cross-validated"
        f" accuracy {rm['cross_validation']['accuracy']} (log loss {rm['cross_validation']['log_loss']});"
        f" test accuracy {rt['accuracy']} (too low {rt['too_low']})",
        f"  test, other counts: median class {rt['median_class_accuracy']} (too low {rt['median_class_too_low']}),"
        f" rounded expected count {rt['rounded_expected_accuracy']}; baselines: majority class"
        f" {rt['baseline_majority_class_accuracy']}, per-complaint table {rt['baseline_complaint_table_accuracy']},"
        f" rules engine {rt['baseline_rules_engine_accuracy']}",
        f"wrote {path} ({path.stat().st_size} bytes)",
    ]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server.learned.train", description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where model.json goes")
    parser.add_argument("--data", type=Path, default=NHAMCS_CSV, help="NHAMCS visits.csv.gz")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N visits of each year set")
    parser.add_argument("--high-risk-share", type=float, default=HIGH_RISK_SHARE, help="share flagged at B")
    parser.add_argument("--min-count", type=int, default=MIN_COUNT, help="training visits a feature needs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = _arguments(argv)
    started = time.perf_counter()
    result = run(
        options.output_dir,
        data=options.data,
        limit=options.limit,
        high_risk_share=options.high_risk_share,
        min_count=options.min_count,
    )
    for line in result.report:
        print(line)
    print(f"took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
