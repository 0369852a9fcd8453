"""The learned estimates, evaluated in plain Python on the request path.

Two logistic models, fitted by server/learned/train.py on NHAMCS 2016-2018 and
shipped as data/model.json (coefficients, not pickles; no ML library is needed
to serve):

- `critical_risk(facts)`: the probability of a critical outcome (ICU admission,
  death in the ED, intubation, central line, CPR or BiPAP/CPAP), for decision
  point B. The model also carries the probabilities above which each share of
  training visits fell (`thresholds`); the thresholds served are chosen from
  them in data/policy.toml;
- `resources(facts)`: the probabilities of 0, 1 and 2 or more ESI resources
  as triage anticipates them (what the hospital's level 5, 4 or 3 stood for),
  for decision point C. `count` is the most likely class unless the caller
  sets thresholds (`no_resources_at`, `two_or_more_at`), as the service does
  from data/policy.toml. `unlearned` names the case's concepts too rare in
  the training visits to be learned, on which the estimate is silent.

Each estimate names its strongest contributors: the case's features whose
weight most raises the estimate (the log-odds of a critical outcome, or of the
predicted class against the others) compared with an average training visit.
For a linear model that is the exact Shapley value of each present feature
(a one-hot family such as the age bins counting as one). Only contributions
above `MIN_CONTRIBUTION` are named, and never a missing vital sign or an
unknown sex or arrival mode: those count in the estimate but are not facts
about the patient.

Both estimates share one `features(facts)` call: `estimates(facts)` gives both;
together they take about 15-25 us per case on the development machine
(engine.read excluded), most of it in Python dictionary lookups.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources as package_files
from pathlib import Path
from typing import Any, NamedTuple

from server.esi.engine import CaseFacts
from server.learned.features import CONCEPT, MISSING, UNKNOWN, family, features, group, label, possible_features

MODEL_FILE = "model.json"
FORMAT = 1
# Contributions (log-odds) below this are not named: they move the estimate
# by less than about 5 %.
MIN_CONTRIBUTION = 0.05
TOP_CONTRIBUTORS = 3
RESOURCE_CLASSES = ("0", "1", "2+")
_RESOURCE_WORDS = ("no resources", "one resource", "two or more resources")
# Features that say a value is not known: they are never named as contributors.
_UNNAMED = (f":{MISSING}", f":{UNKNOWN}")


class Contributor(NamedTuple):
    """A feature of the case that raises an estimate, and by how much (log-odds)."""

    feature: str
    label: str
    weight: float


@dataclass(frozen=True, slots=True)
class Estimate:
    """The estimated probability of a critical outcome (decision point B)."""

    probability: float
    contributors: tuple[Contributor, ...]

    @property
    def text(self) -> str:
        """'estimated risk of a critical outcome 18 %: SpO2 88 %, age 81 years, dyspnea'."""
        return f"estimated risk of a critical outcome {percent(self.probability)}{_because(self.contributors)}"


@dataclass(frozen=True, slots=True)
class ResourceEstimate:
    """The estimated number of ESI resources (decision point C): 0, 1 or 2 (two or more)."""

    probabilities: tuple[float, float, float]
    count: int
    contributors: tuple[Contributor, ...]
    # The case's concepts (features) too rare in the training visits to be learned: the estimate knows nothing of them.
    unlearned: tuple[str, ...] = ()

    @property
    def probability(self) -> float:
        """The probability of the predicted count."""
        return self.probabilities[self.count]

    @property
    def text(self) -> str:
        """'estimated two or more resources (72 %): chest pain, age 67 years, arrived by ambulance'."""
        return f"estimated {_RESOURCE_WORDS[self.count]} ({percent(self.probability)}){_because(self.contributors)}"


def percent(probability: float) -> str:
    """18 %; 0.4 % and 99.6 % near the ends, where whole percents would say 0 or 100."""
    value = probability * 100
    return f"{value:.1f} %" if value < 1 or value > 99 else f"{value:.0f} %"


def _because(contributors: Sequence[Contributor]) -> str:
    return ": " + ", ".join(c.label for c in contributors) if contributors else ""


class LinearModel:
    """A logistic model (one row of weights) or a multinomial one (a row per class)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.classes: tuple[str, ...] = tuple(doc["classes"])
        self.intercepts: tuple[float, ...] = tuple(float(v) for v in doc["intercepts"])
        rows = len(self.intercepts)
        self.weights: dict[str, tuple[float, ...]] = {f: tuple(w) for f, w in doc["weights"].items()}
        self.baselines: dict[str, tuple[float, ...]] = {g: tuple(b) for g, b in doc["baselines"].items()}
        if any(len(w) != rows for w in (*self.weights.values(), *self.baselines.values())):
            raise ValueError("every weight and baseline needs one value per row of the model")
        # What is served: a vital sign not sent, or sex or arrival unknown, counts
        # as the average training visit's value of that family. In NHAMCS a
        # missing value goes with sicker patients (too ill to measure); in
        # service it only means the integration did not send it, which says
        # nothing about the patient.
        self.served: dict[str, tuple[float, ...]] = dict(self.weights)
        for feature in possible_features():
            if feature.endswith(_UNNAMED) and group(feature) in self.baselines:
                self.served[feature] = self.baselines[group(feature)]
        # What each feature adds against an average training visit, for every row
        # (a multinomial row's weights taken relative to the other rows').
        self.contributions: dict[str, tuple[float, ...]] = {
            f: self._contribution(f) for f in sorted({*self.weights, *possible_features()})
        }
        # By row, the features worth naming: known values that raise it enough.
        self._named: tuple[dict[str, float], ...] = tuple(
            {f: c[row] for f, c in self.contributions.items() if c[row] > MIN_CONTRIBUTION and not f.endswith(_UNNAMED)}
            for row in range(rows)
        )

    def _centred(self, values: Sequence[float]) -> tuple[float, ...]:
        if len(values) == 1:
            return tuple(values)
        mean = math.fsum(values) / len(values)
        return tuple(v - mean for v in values)

    def _contribution(self, feature: str) -> tuple[float, ...]:
        # A feature too rare in training to get a weight still moves its group
        # away from the average visit's.
        rows = len(self.intercepts)
        weights = self._centred(self.weights.get(feature, (0.0,) * rows))
        baseline = self._centred(self.baselines.get(group(feature), (0.0,) * rows))
        return tuple(w - b for w, b in zip(weights, baseline, strict=True))

    def logits(self, found: Sequence[str], *, as_trained: bool = False) -> list[float]:
        """The log-odds served, or, `as_trained`, those of the fitted model (missing values as fitted)."""
        weights = self.weights if as_trained else self.served
        if len(self.intercepts) == 1:
            total = self.intercepts[0]
            for feature in found:
                w = weights.get(feature)
                if w is not None:
                    total += w[0]
            return [total]
        if len(self.intercepts) == 3:
            z0, z1, z2 = self.intercepts
            for feature in found:
                w = weights.get(feature)
                if w is not None:
                    z0 += w[0]
                    z1 += w[1]
                    z2 += w[2]
            return [z0, z1, z2]
        z = list(self.intercepts)
        for feature in found:
            w = weights.get(feature)
            if w is not None:
                for k, value in enumerate(w):
                    z[k] += value
        return z

    def probabilities(self, found: Sequence[str], *, as_trained: bool = False) -> list[float]:
        """Class probabilities; `as_trained`, exactly as scikit-learn's predict_proba gives them."""
        z = self.logits(found, as_trained=as_trained)
        if len(z) == 1:
            p = _sigmoid(z[0])
            return [1 - p, p]
        top = max(z)
        exps = [math.exp(v - top) for v in z]
        total = sum(exps)
        return [e / total for e in exps]

    def contributors(
        self, found: Sequence[str], row: int, facts: CaseFacts, names: dict[str, str] | None = None
    ) -> tuple[Contributor, ...]:
        """The present features that raise this row's log-odds most, strongest first.

        Missing vital signs and unknown sex or arrival count in the estimate
        but are not named: they are not facts about the patient. `names`
        remembers labels across calls for the same case.
        """
        named = self._named[row]
        scored = [(value, feature) for feature in found if (value := named.get(feature)) is not None]
        scored.sort(reverse=True)
        names = {} if names is None else names
        top = []
        for value, feature in scored[:TOP_CONTRIBUTORS]:
            name = names.get(feature)
            if name is None:
                name = names[feature] = label(feature, facts)
            top.append(Contributor(feature, name, round(value, 4)))
        return tuple(top)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


@dataclass(frozen=True)
class Model:
    """The exported models with their metadata."""

    version: str
    critical: LinearModel
    resources: LinearModel
    high_risk_threshold: float
    high_risk_share: float
    # share of training visits -> the probability above which they fall.
    thresholds: dict[float, float]
    metadata: dict[str, Any]

    @property
    def data_sha256(self) -> str:
        return str(self.metadata["training"]["data_sha256"])

    @property
    def metrics(self) -> dict[str, Any]:
        return {name: self.metadata[name]["metrics"] for name in ("critical_outcome", "resources")}

    @property
    def feature_count(self) -> int:
        return len(set(self.critical.weights) | set(self.resources.weights))

    @cached_property
    def learned_for_resources(self) -> frozenset[str]:
        """The features the resource model saw in enough training visits to learn (read once, off the hot path)."""
        training = self.metadata["training"]
        least = int(training["min_resource_concept_count"])
        return frozenset(f for f, count in training["feature_counts"].items() if int(count) >= least)

    @property
    def tables_version(self) -> str:
        """The clinical tables (complaint reader) the model was trained with."""
        return str(self.metadata["training"]["tables_version"])

    def threshold_for_share(self, share: float) -> float:
        """The threshold that flags this share (0.02-0.30) of the training visits."""
        key = round(share, 2)
        if key not in self.thresholds:
            raise KeyError(f"no threshold for share {share}: choose one of {sorted(self.thresholds)}")
        return self.thresholds[key]


def parse_model(raw: bytes) -> Model:
    doc = json.loads(raw)
    if doc.get("format") != FORMAT:
        raise ValueError(f"learned model format {doc.get('format')!r} is not {FORMAT}")
    critical = doc["critical_outcome"]
    needed = LinearModel(doc["resources"]["model"])
    if needed.classes != RESOURCE_CLASSES:
        raise ValueError(f"the resource model's classes are {needed.classes}, not {RESOURCE_CLASSES}")
    return Model(
        version=hashlib.sha256(raw).hexdigest()[:12],
        critical=LinearModel(critical["model"]),
        resources=needed,
        high_risk_threshold=float(critical["high_risk_threshold"]),
        high_risk_share=float(critical["high_risk_share"]),
        thresholds={float(row["share"]): float(row["threshold"]) for row in critical["thresholds"]},
        metadata=doc,
    )


def read_model(path: Path) -> Model:
    """A model from a file (the training command's output, or a test's)."""
    return parse_model(path.read_bytes())


@cache
def model() -> Model:
    """The shipped model, loaded once per process."""
    return parse_model((package_files.files("server.learned") / "data" / MODEL_FILE).read_bytes())


def critical_risk(facts: CaseFacts, found: Sequence[str] | None = None, shipped: Model | None = None) -> Estimate:
    """The estimated probability of a critical outcome, with its strongest contributors."""
    return _critical_risk(shipped or model(), facts, features(facts) if found is None else found, {})


def _critical_risk(m: Model, facts: CaseFacts, found: Sequence[str], names: dict[str, str]) -> Estimate:
    probability = m.critical.probabilities(found)[1]
    return Estimate(
        probability=probability,
        contributors=m.critical.contributors(found, 0, facts, names),
    )


def resource_count(
    probabilities: Sequence[float], no_resources_at: float | None = None, two_or_more_at: float | None = None
) -> int:
    """The count an estimate stands for: the most likely, or by thresholds when both are given.

    With thresholds: two or more at or above `two_or_more_at` probability of
    two or more (checked first: the safe side), else none at or above
    `no_resources_at` probability of none, else one.
    """
    if no_resources_at is None and two_or_more_at is None:
        return max(range(len(probabilities)), key=probabilities.__getitem__)
    if no_resources_at is None or two_or_more_at is None:
        raise ValueError("give both no_resources_at and two_or_more_at, or neither")
    if probabilities[2] >= two_or_more_at:
        return 2
    return 0 if probabilities[0] >= no_resources_at else 1


def resources(
    facts: CaseFacts,
    found: Sequence[str] | None = None,
    shipped: Model | None = None,
    *,
    no_resources_at: float | None = None,
    two_or_more_at: float | None = None,
) -> ResourceEstimate:
    """The estimated ESI resources (0, 1, 2 or more), with the contributors to that count.

    The count is the most likely one unless both thresholds are given (see `resource_count`).
    """
    found = features(facts) if found is None else found
    return _resources(shipped or model(), facts, found, {}, no_resources_at, two_or_more_at)


def _resources(
    m: Model,
    facts: CaseFacts,
    found: Sequence[str],
    names: dict[str, str],
    no_resources_at: float | None,
    two_or_more_at: float | None,
) -> ResourceEstimate:
    p = m.resources.probabilities(found)
    count = resource_count(p, no_resources_at, two_or_more_at)
    return ResourceEstimate(
        probabilities=(p[0], p[1], p[2]),
        count=count,
        contributors=m.resources.contributors(found, count, facts, names),
        unlearned=tuple(f for f in found if f not in m.learned_for_resources and family(f) == CONCEPT),
    )


def estimates(
    facts: CaseFacts,
    shipped: Model | None = None,
    *,
    no_resources_at: float | None = None,
    two_or_more_at: float | None = None,
) -> tuple[Estimate, ResourceEstimate]:
    """Both estimates from one reading of the features (and of each contributor's label)."""
    m = shipped or model()
    found = features(facts)
    names: dict[str, str] = {}
    return (
        _critical_risk(m, facts, found, names),
        _resources(m, facts, found, names, no_resources_at, two_or_more_at),
    )


def model_version() -> str:
    """A content hash of the shipped model, for the ruleset version."""
    return model().version
