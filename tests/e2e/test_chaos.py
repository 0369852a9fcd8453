"""Three faults of `make chaos`, short (bench/chaos.py runs them all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import chaos
from tests.e2e.tools import require


@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_a_hung_redis_a_dead_model_and_a_stopped_database_lose_no_acknowledged_call_and_the_service_recovers(
    tmp_path: Path,
) -> None:
    require("ghz", "redis-server", postgres=True)

    # A stopped PostgreSQL once answered INTERNAL (a usage write's error replaced the call's UNAVAILABLE).
    faults = ["redis-hang", "model-down", "postgres-down"]
    outcomes = await chaos.run(tmp_path, faults, seconds=6)

    assert [o.fault for o in outcomes] == faults
    for outcome in outcomes:
        assert outcome.load.calls > 0
        assert outcome.failures == [], chaos.report(outcomes, 6)
