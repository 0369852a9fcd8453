"""Screenshots of the pages, written by the browser tests under stable names.

Into build/screenshots/ (ignored by git), so that a test run leaves the tree as it was; `make screenshots`
writes them into docs/screenshots/ (TEST_SCREENSHOTS_DIR), where the README shows them.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from selenium.webdriver import Chrome

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / os.environ.get("TEST_SCREENSHOTS_DIR", "build/screenshots")


def screenshot(driver: Chrome, name: str) -> Path:
    """The whole page (not only the window) as <name>.png."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    image = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(image["data"]))
    return path
