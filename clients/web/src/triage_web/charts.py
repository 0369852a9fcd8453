"""Bar charts drawn on the server as SVG: the geometry here, the markup in templates/charts.html.

Each chart is an image with a title and a description for screen readers, and the page shows the same
numbers in a table next to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

WIDTH = 640
BAR_HEIGHT = 22
GAP = 8
LABEL_WIDTH = 170
VALUE_WIDTH = 110


@dataclass(frozen=True)
class Bar:
    label: str
    text: str
    y: int
    width: float


@dataclass(frozen=True)
class Chart:
    """A horizontal bar chart: one bar per item, scaled to the largest value (or to `limit`)."""

    id: str
    title: str
    description: str
    bars: tuple[Bar, ...]
    width: int
    height: int
    label_width: int
    bar_area: int
    limit_x: float | None


def bar_chart(
    chart_id: str,
    title: str,
    items: Sequence[tuple[str, float]],
    text: Callable[[float], str],
    *,
    limit: float | None = None,
) -> Chart:
    """A chart of `items` (label, value); `text` writes a value; `limit` draws a line at that value."""
    bar_area = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    top = max([value for _, value in items] + [limit or 0, 0])
    scale = bar_area / top if top > 0 else 0.0
    bars = tuple(
        Bar(label=label, text=text(value), y=i * (BAR_HEIGHT + GAP), width=max(0.0, value * scale))
        for i, (label, value) in enumerate(items)
    )
    height = max(1, len(bars)) * (BAR_HEIGHT + GAP)
    summary = "; ".join(f"{bar.label}: {bar.text}" for bar in bars) or "no data"
    if limit is not None:
        summary += f"; limit {text(limit)}"
    return Chart(
        id=chart_id,
        title=title,
        description=summary,
        bars=bars,
        width=WIDTH,
        height=height,
        label_width=LABEL_WIDTH,
        bar_area=bar_area,
        limit_x=LABEL_WIDTH + limit * scale if limit is not None else None,
    )
