"""Every page of the web tier passes the automated accessibility check (axe), and is photographed for the docs."""

from __future__ import annotations

from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By

from tests.browser.axe import FAILING, describe, violations
from tests.browser.pages import classify, sign_in_with_key
from tests.browser.screenshots import screenshot
from tests.browser.topology import Topology

ADMIN_PAGES = {
    "admin-settings": "/admin/settings",
    "admin-usage": "/admin/usage",
    "admin-audit": "/admin/audit",
    "admin-keys": "/admin/keys",
    "admin-backends": "/admin/backends",
}


def test_every_page_has_no_serious_accessibility_violation(signed_out: Chrome, stack: Topology) -> None:
    browser = signed_out
    found: dict[str, str] = {}

    def check(name: str) -> None:
        """axe on the page as it is now, and its screenshot as docs/screenshots/<name>.png."""
        serious = [v for v in violations(browser) if v["impact"] in FAILING]
        if serious:
            found[name] = describe(serious)
        screenshot(browser, name)

    browser.get(stack.url("/"))
    check("demo")
    classify(browser, stack)
    check("demo-result")
    browser.get(stack.url("/admin/sign-in"))
    check("admin-sign-in")
    sign_in_with_key(browser, stack)
    for name, path in ADMIN_PAGES.items():
        browser.get(stack.url(path))
        assert browser.find_elements(By.ID, "sign-out"), f"{path} did not open for the signed-in admin"
        check(name)

    assert not found, "serious or critical axe violations:\n" + "\n".join(f"{k}:\n{v}" for k, v in found.items())
