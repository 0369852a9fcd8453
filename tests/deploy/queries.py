"""The PromQL queries of the alerting rules and the dashboard, and the metric names they read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "triage.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "triage.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "triage.json"

# Prometheus's own series, which no server exports.
PROMETHEUS_SERIES = frozenset({"up"})

# What is not a metric name: quoted strings, label matchers, ranges, grouping labels.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded series) names `expr` selects: identifiers that are not functions or keywords."""
    text = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub(" ", expr))))
    return {
        match[0]
        for match in _IDENTIFIER.finditer(text)
        if match[0].lower() not in _KEYWORDS and not text[match.end() :].lstrip().startswith("(")
    }


def rules() -> list[dict[str, Any]]:
    """Every rule of triage.rules.yml, recording and alerting."""
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_queries() -> list[str]:
    """The expression of every panel's every target, rows' panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [*dashboard["panels"], *(p for row in dashboard["panels"] for p in row.get("panels", []))]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def queried_names() -> set[str]:
    """Every name a rule or a panel reads, less what the rules record and Prometheus's own series."""
    queries = [rule["expr"] for rule in rules()] + dashboard_queries()
    return {name for expr in queries for name in metric_names(expr)} - recorded_names() - PROMETHEUS_SERIES
