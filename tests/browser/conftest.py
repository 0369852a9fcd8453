"""Fixtures of the browser tests: one headless Chromium and one topology of real processes for all of them.

Both are package-scoped: started for the first browser test, stopped after the last, not kept for the rest of
the suite. A test that needs no admin session starts from `signed_out`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By

from tests.browser.chromium import chromium
from tests.browser.topology import Topology, topology


@pytest.fixture(scope="package")
def browser() -> Iterator[Chrome]:
    """Headless Chromium, shared: each test loads the page it starts from."""
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="package")
def stack(browser: Chrome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """The server, the fake model server, the OIDC issuer and triage-web (after the browser: no browser, no start)."""
    with topology(tmp_path_factory.mktemp("topology")) as running:
        yield running


@pytest.fixture
def signed_out(browser: Chrome, stack: Topology) -> Chrome:
    """The browser with no session of an earlier test (cookies are per origin: load one of the web tier's pages)."""
    browser.get(stack.url("/healthz"))
    browser.delete_all_cookies()
    return browser


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed browser test's report says where the browser was and what the page said, and keeps a screenshot."""
    report = yield
    arguments = getattr(item, "funcargs", {})
    browser = arguments.get("browser", arguments.get("signed_out"))
    if report.failed and isinstance(browser, Chrome):
        said = {
            name: [e.text for e in browser.find_elements(By.ID, name)] for name in ("notice", "error", "result-error")
        }
        report.sections.append(("browser", f"at {browser.current_url}, the page said {said}"))
        stack = arguments.get("stack")
        if isinstance(stack, Topology):
            path = stack.directory / f"{item.name}.png"
            browser.save_screenshot(str(path))
            report.sections.append(("browser", f"screenshot {path}; the processes' logs are beside it"))
    return report
