"""Headless Debian Chromium driven through Selenium and Debian's chromedriver (apt: chromium chromium-driver)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from selenium.webdriver import Chrome, ChromeOptions, ChromeService

from tests.e2e.tools import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Wide enough for the admin tables, and the same on every machine, so that screenshots compare.
WINDOW = (1280, 900)
# Chromium's own background traffic (updates, sync, field trials, QUIC probes) is refused on a closed
# network, and waiting on it slows every page; none of it is part of what the tests look at.
FLAGS = (
    "--headless",
    "--no-sandbox",  # as root in a container: Chromium's sandbox needs user namespaces it does not have
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a container's /dev/shm is small; large pages crash the renderer
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--lang=en-US",
)


@contextmanager
def chromium() -> Iterator[Chrome]:
    """A fresh headless Chromium with a profile of its own, quit (with its chromedriver) afterwards."""
    require("chromium", "chromedriver")
    with tempfile.TemporaryDirectory(prefix="triage-chromium-") as profile:
        options = ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        # An explicit driver path: Selenium Manager, which would download one, is never run.
        driver = Chrome(options=options, service=ChromeService(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(20)
            driver.set_script_timeout(20)
            yield driver
        finally:
            driver.quit()
