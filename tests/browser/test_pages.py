"""Every page of the web tier passes the automated accessibility check (axe), and is photographed for the docs."""

from __future__ import annotations

from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions

from tests.browser.axe import FAILING, describe, violations
from tests.browser.pages import answered, classify, fill_case, sign_in_with_key, wait
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

    def check(name: str, *, photographed: bool = True) -> None:
        """axe on the page as it is now, and its screenshot as <name>.png (tests/browser/screenshots.py)."""
        serious = [v for v in violations(browser) if v["impact"] in FAILING]
        if serious:
            found[name] = describe(serious)
        if photographed:
            screenshot(browser, name)

    browser.get(stack.url("/"))
    check("demo")
    classify(browser, stack)
    check("demo-result")
    # The API's own validation message, next to the field it names: an age the browser lets through.
    browser.get(stack.url("/"))
    fill_case(browser, {"age.value": "200", "age.unit": "years", "chief_complaint": "fall from a ladder"})
    browser.find_element(By.ID, "submit-case").click()
    wait(browser).until(expected_conditions.text_to_be_present_in_element((By.ID, "error-age-value"), " "))
    check("demo-invalid")
    browser.get(stack.url("/admin/sign-in"))
    check("admin-sign-in")
    sign_in_with_key(browser, stack)
    for name, path in ADMIN_PAGES.items():
        browser.get(stack.url(path))
        assert browser.find_elements(By.ID, "sign-out"), f"{path} did not open for the signed-in admin"
        check(name)
    # The keys page as it shows a new key's secret, once (not photographed: a secret has no place in the docs).
    browser.get(stack.url("/admin/keys"))
    browser.find_element(By.ID, "f-name").send_keys("ward-kiosk")
    browser.find_element(By.ID, "create-key").click()
    answered(browser, expected_conditions.presence_of_element_located((By.ID, "new-key-secret")))
    check("admin-keys with a new secret", photographed=False)

    assert not found, "serious or critical axe violations:\n" + "\n".join(f"{k}:\n{v}" for k, v in found.items())
