"""A short soak (bench/soak.py; `make soak` runs it for ten minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak
from tests.e2e.tools import require


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_sustained_load_answers_every_call_and_audits_each(tmp_path: Path) -> None:
    require("ghz", "redis-server", postgres=True)

    report = await soak.run(tmp_path, seconds=10, concurrency=50, warmup_calls=300)

    assert report.load.calls > 0
    assert report.failures == [], report.text()
    # Memory is a figure of the long run (make soak), not asserted here: it is measured per worker.
    assert len(report.rss_end_mb) == 2
