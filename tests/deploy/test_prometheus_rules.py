"""The alerting rules: valid, unit-tested by promtool (fire and stay quiet), each with its runbook."""

from __future__ import annotations

import subprocess
from collections import defaultdict

import yaml

from tests.deploy.queries import ROOT, RULE_TESTS, RULES, dashboard_queries, metric_names, recorded_names, rules
from tests.e2e.tools import require


def _promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    require("promtool")
    return subprocess.run(["promtool", *arguments], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_unit_tests_pass() -> None:
    tested = _promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_runbook_in_the_repository() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert alerts
    for alert in alerts:
        runbook = alert["annotations"]["runbook_url"]
        assert runbook == f"docs/runbooks/{alert['alert']}.md", alert["alert"]
        assert (ROOT / runbook).is_file(), runbook


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert name has a case where it fires and one where it does not, in triage.rules.test.yml."""
    outcomes: dict[str, set[bool]] = defaultdict(set)
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            outcomes[check["alertname"]].add(bool(check.get("exp_alerts")))
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {name: outcomes[name] for name in alerts} == {name: {True, False} for name in alerts}


def test_every_recorded_series_is_used() -> None:
    """A recording rule no alert and no panel reads is dead weight."""
    read = {name for expr in [r["expr"] for r in rules()] + dashboard_queries() for name in metric_names(expr)}
    assert recorded_names() - read == set()
