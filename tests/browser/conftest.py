"""Fixtures of the browser tests: one headless Chromium for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver import Chrome

from tests.browser.chromium import chromium


@pytest.fixture(scope="session")
def browser() -> Iterator[Chrome]:
    """Headless Chromium, started once: each test begins by loading its page (and signing out if it signed in)."""
    with chromium() as driver:
        yield driver
