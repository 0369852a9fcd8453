"""The demo form used with the keyboard alone, as a person who cannot use a mouse (or a screen-reader user) does."""

from __future__ import annotations

from selenium.webdriver import ActionChains, Chrome
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.browser.pages import CHEST_PAIN, result
from tests.browser.topology import Topology

# What is typed at each field as Tab reaches it: text, the first letter of a choice (a select's type-ahead),
# or Space on a checkbox. The same case as CHEST_PAIN, so the answer is known: ESI 2.
TYPED: dict[str, str] = {
    **{name: value for name, value in CHEST_PAIN.items() if isinstance(value, str)},
    "sex": "m",  # Male
    "avpu": "a",  # Alert
    "arrival_mode": "w",  # Walk-in or private vehicle
    "risk_factors=anticoagulated": Keys.SPACE,
}
# The controls a person fills in, in the order they read them on the page (and the form's DOM order).
FORM_CONTROLS = """
return Array.from(document.getElementById('case-form').elements)
  .filter((e) => e.matches('input, select, textarea, button') && e.type !== 'hidden' && !e.disabled)
  .map((e) => e.type === 'checkbox' && e.name === 'risk_factors' ? e.name + '=' + e.value : (e.name || e.id));
"""
LIVE_REGION = "[aria-live]:not([aria-live=off]), [role=status], [role=log], [role=alert]"
READ_ON_REACHES = """
const focus = document.activeElement;
return focus === arguments[0] || focus.contains(arguments[0])
  || Boolean(focus.compareDocumentPosition(arguments[0]) & Node.DOCUMENT_POSITION_FOLLOWING);
"""
DESCRIBE_FOCUS = """
const e = document.activeElement;
if (e === null || e === document.body) return 'body';
if (e.type === 'checkbox' && e.name === 'risk_factors') return e.name + '=' + e.value;
return e.name || e.id || e.textContent.trim();
"""


def _tab(browser: Chrome) -> str:
    ActionChains(browser).send_keys(Keys.TAB).perform()
    return str(browser.execute_script(DESCRIBE_FOCUS))


def _focused(browser: Chrome) -> WebElement:
    return browser.switch_to.active_element


def test_the_demo_form_is_filled_in_and_submitted_with_the_keyboard_alone(browser: Chrome, stack: Topology) -> None:
    browser.get(stack.url("/"))
    expected = browser.execute_script(FORM_CONTROLS)

    assert _tab(browser) == "Skip to main content"  # first, so that the navigation can be skipped
    reached: list[str] = []
    while (focus := _tab(browser)) != "submit-case" and len(reached) < 60:
        if focus in expected:
            reached.append(focus)
            if focus in TYPED and focus != "age.unit":  # years, as it is
                _focused(browser).send_keys(TYPED[focus])
    assert reached == expected[:-1]  # every field, in reading order, and the button last
    values = browser.execute_script("return Object.fromEntries(new FormData(document.getElementById('case-form')))")
    assert (values["sex"], values["avpu"], values["arrival_mode"]) == ("male", "alert", "walk_in")
    assert values["risk_factors"] == "anticoagulated"

    _focused(browser).send_keys(Keys.ENTER)

    card = result(browser)
    assert card.get_attribute("data-level") == "2"
    # Announced to a screen reader as it arrives; the keyboard's place is kept (not dropped to the page), and
    # reading on from there reaches the result.
    assert browser.execute_script("return arguments[0].closest(arguments[1]) !== null", card, LIVE_REGION)
    assert browser.execute_script(DESCRIBE_FOCUS) != "body"
    assert browser.execute_script(READ_ON_REACHES, card)
