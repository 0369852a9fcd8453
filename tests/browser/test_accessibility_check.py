"""The accessibility check itself fails a page that a screen-reader user could not use, and names why."""

from __future__ import annotations

import pytest
from selenium.webdriver import Chrome

from tests.browser.axe import assert_accessible

PAGE = "data:text/html,<!doctype html><html lang=en><title>Age</title><main><h1>Age</h1>{}</main></html>"


def test_an_unlabelled_field_fails_the_check_with_the_rule_and_the_element(browser: Chrome) -> None:
    browser.get(PAGE.format("<input id=age name=age>"))
    with pytest.raises(AssertionError, match=r"(?s)label \(critical\).*#age"):
        assert_accessible(browser, "an unlabelled field")


def test_the_same_field_with_a_label_passes(browser: Chrome) -> None:
    browser.get(PAGE.format("<label for=age>Age</label><input id=age name=age>"))
    assert_accessible(browser, "a labelled field")
