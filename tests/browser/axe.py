"""The automated accessibility check: axe-core (vendored, see vendor/README.md) run in the page under test."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from selenium.webdriver import Chrome

VENDOR = Path(__file__).parent / "vendor"
# What the check fails on: axe's two highest impacts (moderate and minor are reported, not failed).
FAILING = ("serious", "critical")


@functools.cache
def _source() -> str:
    return (VENDOR / "axe.min.js").read_text()


def violations(driver: Chrome) -> list[dict[str, Any]]:
    """axe's violations of every rule it runs by default (WCAG 2.x A and AA, and best practices)."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        # Injected through WebDriver, as the page's Content-Security-Policy would refuse a <script> tag.
        driver.execute_script(_source())
    result: dict[str, Any] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        "  .then(r => done(r.violations), e => done({error: String(e)}));"
    )
    if isinstance(result, dict):
        raise AssertionError(f"axe could not run on {driver.current_url}: {result['error']}")
    return list(result)


def describe(found: list[dict[str, Any]]) -> str:
    """The violations as a reader wants them: rule, impact, what it asks, and each element with its failure."""
    lines = []
    for violation in found:
        lines.append(f"- {violation['id']} ({violation['impact']}): {violation['help']} <{violation['helpUrl']}>")
        for node in violation["nodes"]:
            summary = " ".join(node.get("failureSummary", "").split())
            lines.append(f"    {' > '.join(map(str, node['target']))}: {summary}")
            lines.append(f"      {node['html'][:200]}")
    return "\n".join(lines)


def assert_accessible(driver: Chrome, page: str) -> None:
    """No serious or critical axe violation on the page as it is now."""
    serious = [v for v in violations(driver) if v["impact"] in FAILING]
    assert not serious, f"axe on {page} ({driver.current_url}):\n{describe(serious)}"
