"""What a person does on the web tier's pages, in Selenium: fill the case form, sign in, wait for a result."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.browser.topology import Topology

# Long enough for a busy 2-core machine; a page that is right arrives in well under a second.
WAIT_SECONDS = 20

# A 67-year-old with chest pain: the rules call it high risk (ESI 2) at decision point B.
CHEST_PAIN: Mapping[str, str | tuple[str, ...]] = {
    "age.value": "67",
    "age.unit": "years",
    "sex": "male",
    "chief_complaint": "chest pain radiating to the left arm",
    "history": "Started two hours ago at rest; sweating.",
    "vitals.heart_rate_bpm": "96",
    "vitals.respiratory_rate_per_min": "18",
    "vitals.spo2_percent": "97",
    "vitals.systolic_bp_mmhg": "150",
    "vitals.diastolic_bp_mmhg": "90",
    "vitals.temperature_c": "36.8",
    "vitals.pain_score": "7",
    "avpu": "alert",
    "arrival_mode": "walk_in",
    "risk_factors": ("anticoagulated",),
}


def wait(browser: Chrome, seconds: float = WAIT_SECONDS) -> WebDriverWait[Chrome]:
    return WebDriverWait(browser, seconds)


def fill_case(browser: Chrome, case: Mapping[str, str | tuple[str, ...]]) -> None:
    """Types, selects and ticks as a person would, field by field."""
    form = browser.find_element(By.ID, "case-form")
    for name, value in case.items():
        if isinstance(value, tuple):
            for choice in value:
                box = form.find_element(By.CSS_SELECTOR, f'input[name="{name}"][value="{choice}"]')
                if not box.is_selected():
                    box.click()
            continue
        element = form.find_element(By.NAME, name)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value)


def result(browser: Chrome) -> WebElement:
    """The result card once it is there (the streamed answer's last event); fails at once on an error instead."""
    card = expected_conditions.visibility_of_element_located((By.ID, "result"))
    error = expected_conditions.text_to_be_present_in_element((By.ID, "result-error"), " ")
    wait(browser).until(expected_conditions.any_of(card, error))
    refused = browser.find_element(By.ID, "result-error").text
    assert not refused, f"no result at {browser.current_url}: {refused}"
    return browser.find_element(By.ID, "result")


def classify(browser: Chrome, stack: Topology, case: Mapping[str, str | tuple[str, ...]] = CHEST_PAIN) -> WebElement:
    """Opens the demo page, fills in `case`, submits it and returns the result card."""
    browser.get(stack.url("/"))
    fill_case(browser, case)
    browser.find_element(By.ID, "submit-case").click()
    return result(browser)


def answered(browser: Chrome, success: Callable[[Chrome], object]) -> None:
    """Waits for `success` after a form post, or fails at once with the error the page shows instead."""
    error = expected_conditions.text_to_be_present_in_element((By.ID, "error"), " ")
    wait(browser).until(expected_conditions.any_of(success, error))
    refused = browser.find_element(By.ID, "error").text
    assert not refused, f"refused at {browser.current_url}: {refused}"


def _signed_in(browser: Chrome) -> None:
    answered(browser, expected_conditions.presence_of_element_located((By.ID, "sign-out")))


def sign_in_with_key(browser: Chrome, stack: Topology) -> None:
    browser.get(stack.url("/admin/sign-in"))
    browser.find_element(By.NAME, "api_key").send_keys(stack.admin_key)
    browser.find_element(By.ID, "sign-in-key").click()
    _signed_in(browser)


def sign_in_with_oidc(browser: Chrome, stack: Topology) -> None:
    """Single sign-on through the topology's issuer, which signs its one admin in at once."""
    browser.get(stack.url("/admin/sign-in"))
    browser.find_element(By.ID, "sign-in-oidc").click()
    _signed_in(browser)
