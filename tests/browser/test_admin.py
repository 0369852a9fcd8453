"""The admin console in a real browser: an admin signs in, routes a step to a model, and sees it work and cost."""

from __future__ import annotations

import re
from decimal import Decimal

from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select

from tests.browser.pages import answered, classify, sign_in_with_oidc, wait
from tests.browser.topology import Topology

MODEL = "fake:triage-model"  # the topology's fake model server is the provider `fake`
_COST = re.compile(r"cost ([0-9.,]+) US dollars")


def _save_settings(browser: Chrome) -> None:
    browser.find_element(By.ID, "save-settings").click()
    answered(browser, expected_conditions.text_to_be_present_in_element((By.ID, "notice"), "Saved as version"))


def _dollars(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def _usage_cost(browser: Chrome, stack: Topology, backend: str) -> Decimal:
    """The cost the usage page shows for `backend` this month (0 while it has none)."""
    browser.get(stack.url("/admin/usage"))
    for row in browser.find_elements(By.CSS_SELECTOR, "#usage table tr"):
        cells = row.find_elements(By.CSS_SELECTOR, "th, td")
        if cells and cells[0].text == backend:
            return _dollars(cells[-1].text)
    return Decimal(0)


def test_an_admin_routes_high_risk_to_a_model_and_the_next_case_shows_it_and_its_cost(
    signed_out: Chrome, stack: Topology
) -> None:
    browser = signed_out
    sign_in_with_oidc(browser, stack)
    assert stack.issuer.token_requests[-1]["code_verifier"]  # the code was exchanged with its PKCE verifier

    browser.get(stack.url("/admin/settings"))
    browser.find_element(By.ID, "f-prices-new-backend").send_keys(MODEL)
    browser.find_element(By.ID, "f-prices-new-input_usd").send_keys("1")
    browser.find_element(By.ID, "f-prices-new-output_usd").send_keys("4")
    _save_settings(browser)
    Select(browser.find_element(By.ID, "f-steps-high_risk-backend")).select_by_value(MODEL)
    Select(browser.find_element(By.ID, "f-steps-high_risk-strategy")).select_by_value("most_urgent")
    _save_settings(browser)
    asked_before = len(stack.fake_llm.asked("high_risk"))
    spent_before = _usage_cost(browser, stack, MODEL)

    card = classify(browser, stack)

    assert len(stack.fake_llm.asked("high_risk")) == asked_before + 1
    pipeline = card.find_element(By.CSS_SELECTOR, ".pipeline").text
    # With the most urgent of both answers, B is answered by the rules and the model together.
    assert "B. High risk: rules+fake:triage-model" in pipeline.splitlines()
    cost = _COST.search(pipeline)
    assert cost is not None, pipeline
    assert _dollars(cost[1]) > 0
    # Usage is recorded behind the answer: the page shows it once it is written.
    spent = spent_before + _dollars(cost[1])
    wait(browser).until(lambda _: _usage_cost(browser, stack, MODEL) == spent, f"usage of {MODEL} is not {spent}")
