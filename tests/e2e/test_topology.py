"""The multi-replica topology, short (bench/topology.py; `make topology` runs it longer, with a restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import topology
from tests.e2e.tools import require


@pytest.mark.postgres
@pytest.mark.timeout(150)
async def test_a_replica_killed_under_load_behind_nginx_loses_no_acknowledged_call(tmp_path: Path) -> None:
    """2 replicas x 2 workers behind nginx on PostgreSQL and Redis: limits exact, only UNAVAILABLE, all audited."""
    require("ghz", "nginx", "redis-server", postgres=True)

    report = await topology.run(tmp_path, seconds=6, restart=False, budget=True)

    assert report.passed, report.text()
    # The kill happened under load: calls were in flight on both sides of it.
    assert report.kill.load.ok > 0
    assert report.kill.typed_ok > 0
