"""Overload: past max_in_flight_calls a call is answered at once, retryably, counted and logged once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import timedelta

import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from server.app import TriageServer
from server.calls import Role
from server.config import Settings
from server.services.classify import CLASSIFY_METHOD
from tests.conftest import issue_test_key
from tests.support import make_case
from triage_client import AsyncTriageClient, Unavailable


def _refused_count() -> float:
    return REGISTRY.get_sample_value("triage_overload_refused_total", {"method": CLASSIFY_METHOD}) or 0.0


async def test_past_the_in_flight_limit_a_call_is_refused_at_once_with_retry_info(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(
        update={"max_in_flight_calls": 5, "overload_retry_after_seconds": 1.5, "classify_default_deadline_seconds": 30}
    )
    server = TriageServer(settings)
    await server.start()
    database = settings.database_url.removeprefix("sqlite:///")
    lock = None
    try:
        key = await issue_test_key(server, Role.CLINICIAN)
        target = f"127.0.0.1:{server.port}"
        async with AsyncTriageClient(target, api_key=key) as client:
            await client.classify(make_case("cough", "30y"))
            # Hold the database's write lock: the next five calls stay in flight, waiting to audit.
            lock = sqlite3.connect(database, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            slow = [asyncio.create_task(client.classify(make_case("CP", f"{60 + i}y"))) for i in range(5)]
            await asyncio.sleep(0.5)
            assert not any(task.done() for task in slow), slow
            refused_before = _refused_count()

            with caplog.at_level(logging.WARNING, logger="triage.overload"):
                with pytest.raises(Unavailable) as refused:
                    await client.classify(make_case("headache", "40y"))
                # Health checks still answer: the process is busy, not dead.
                status = await client.health()

            assert refused.value.retry_delay == timedelta(seconds=1.5)
            assert "in flight" in str(refused.value)
            assert status == health_pb2.HealthCheckResponse.SERVING
            # The client retried UNAVAILABLE (4 attempts): each refusal counted, one warning logged.
            assert _refused_count() - refused_before == 4
            warnings = [r for r in caplog.records if r.getMessage() == "overloaded: refusing calls"]
            assert len(warnings) == 1

            lock.execute("ROLLBACK")
            lock.close()
            lock = None
            assert all(c.classification_id for c in await asyncio.gather(*slow))
            # Every slot came back: as many calls as the limit are served together again.
            cases = [make_case("ankle injury", f"{20 + i}y") for i in range(5)]
            assert len(await asyncio.gather(*(client.classify(case) for case in cases))) == 5
    finally:
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
        await server.stop(grace_seconds=0)
