"""The public demo page in a real browser: a case in, the level and the steps streamed out."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions

from tests.browser.pages import CHEST_PAIN, fill_case, result, wait
from tests.browser.topology import Topology, web_process

# Records, in the page, what the stream adds and when: one entry per step as it arrives, then the result.
# It lives in the page's window: had the form been posted the old way (a new page), the record would be gone.
RECORD_ARRIVALS = """
window.arrivals = [];
new MutationObserver((changes) => {
  for (const change of changes) {
    for (const node of change.addedNodes) {
      if (node.nodeType !== 1) continue;
      if (change.target.id === 'steps') window.arrivals.push('step');
      else if (node.id === 'result' || node.querySelector('#result')) window.arrivals.push('result');
    }
  }
}).observe(document.getElementById('outcome'), {childList: true, subtree: true});
"""


def test_a_case_gets_its_level_and_the_steps_stream_in_before_it(browser: Chrome, stack: Topology) -> None:
    browser.get(stack.url("/"))
    fill_case(browser, CHEST_PAIN)
    browser.execute_script(RECORD_ARRIVALS)
    browser.find_element(By.ID, "submit-case").click()

    card = result(browser)
    assert card.get_attribute("data-level") == "2"
    assert "ESI 2" in card.find_element(By.ID, "result-heading").text
    steps = browser.find_elements(By.CSS_SELECTOR, "#steps > li")
    arrivals = browser.execute_script("return window.arrivals")
    assert arrivals == ["step"] * len(steps) + ["result"], arrivals
    assert len(steps) >= 2
    decisive = browser.find_element(By.CSS_SELECTOR, "#steps > li.decisive")
    assert "settled the level: ESI 2" in decisive.text


# Posts the page's own form (its CSRF token and cookie included) `arguments[0]` times, one after another,
# as a visitor clicking quickly would, and answers the HTTP statuses.
POST_FORM_TIMES = """
const [times, done] = arguments;
const form = document.getElementById('case-form');
(async () => {
  const statuses = [];
  for (let i = 0; i < times; i++) {
    const response = await fetch(form.action, {
      method: 'POST', body: new URLSearchParams(new FormData(form)), headers: {Accept: 'text/event-stream'},
    });
    await response.text();
    statuses.push(response.status);
  }
  return statuses;
})().then(done, (error) => done(String(error)));
"""


@pytest.fixture
def web_with_the_default_limit(stack: Topology) -> Iterator[str]:
    """Another triage-web, with a gateway key that has no limit of its own: 20 a day per visitor."""
    with web_process(stack, stack.default_limit_gateway_key, name="web-default-limit") as url:
        yield url


def test_the_21st_demo_call_of_the_day_is_refused_with_when_it_resets(
    browser: Chrome, web_with_the_default_limit: str
) -> None:
    browser.get(f"{web_with_the_default_limit}/")
    fill_case(browser, CHEST_PAIN)
    assert browser.execute_async_script(POST_FORM_TIMES, 19) == [200] * 19

    # The 20th, from the keyboard (Space on the button): answered, with none left.
    browser.find_element(By.ID, "submit-case").send_keys(Keys.SPACE)
    assert result(browser).get_attribute("data-level") == "2"
    left = browser.find_element(By.ID, "rate-limit").text
    assert re.match(r"0 of 20 calls left today; the next one frees up at \d\d:\d\d UTC \(in .+\)\.$", left), left

    button = browser.find_element(By.ID, "submit-case")
    wait(browser).until(lambda _: button.get_attribute("aria-disabled") is None)  # the 20th's stream has ended
    button.click()
    refusal = wait(browser).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#result-error p"))
    )
    assert re.match(
        r"You have used all 20 demo classifications allowed for today\. "
        r"You can try again at \d\d:\d\d UTC \(in [^)]+\)\.$",
        refusal.text,
    ), refusal.text
    assert browser.find_element(By.ID, "result-error").get_attribute("role") == "alert"
    assert not browser.find_elements(By.ID, "result")


def test_without_script_the_form_posts_and_the_page_that_comes_back_shows_the_result(
    browser: Chrome, stack: Topology
) -> None:
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(stack.url("/"))
        fill_case(browser, CHEST_PAIN)
        browser.find_element(By.ID, "submit-case").click()

        card = result(browser)
        assert card.get_attribute("data-level") == "2"
        assert browser.find_elements(By.CSS_SELECTOR, "#steps > li.decisive")
        assert browser.current_url == stack.url("/explain")  # a page of its own: the form was posted, not fetched
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
