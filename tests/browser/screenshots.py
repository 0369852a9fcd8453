"""Screenshots of the pages, written by the browser tests to docs/screenshots/ under stable names."""

from __future__ import annotations

import base64
from pathlib import Path

from selenium.webdriver import Chrome

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def screenshot(driver: Chrome, name: str) -> Path:
    """The whole page (not only the window) as docs/screenshots/<name>.png."""
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
