"""The audit log: group commit, durability, failure and overload, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from server.errors import Unavailable
from server.ids import new_id
from server.store.audit import AuditLog, AuditRecord
from server.store.database import open_database
from tests.support import eventually, migrated_sqlite

SECRET = b"audit-test-secret"


def _row(**overrides: Any) -> AuditRecord:
    row = AuditRecord(
        classification_id=new_id(),
        recorded_at=datetime.now(UTC),
        method="/triage.v1.ClassifyService/Classify",
        esi_level=3,
        decided_at=4,
        finding_codes="resources.count",
        ruleset_version="test",
        input_hmac_sha256="0" * 64,
        confidence=0.8,
        case_ref="",
        key_id="",
        request_id="",
        cost_usd_micros=0,
        input_tokens=0,
        output_tokens=0,
        cache_hit=False,
    )
    return dataclasses.replace(row, **overrides)


@pytest.fixture
async def audit(database_url: str) -> AsyncIterator[AuditLog]:
    engine = await asyncio.to_thread(open_database, database_url)
    log = AuditLog(engine, SECRET, max_batch_records=256)
    yield log
    await log.close()
    engine.dispose()


def _count(database_url: str) -> int:
    engine = open_database(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one())
    finally:
        engine.dispose()


async def test_concurrent_records_share_transactions(audit: AuditLog, database_url: str) -> None:
    await asyncio.gather(*(audit.record(_row()) for _ in range(300)))

    assert audit.records_written == 300
    # Group commit: far fewer transactions than records, each at most 256 records.
    assert 2 <= audit.commits < 100
    assert await asyncio.to_thread(_count, database_url) == 300


async def test_an_acknowledged_record_is_visible_to_a_new_connection(audit: AuditLog, database_url: str) -> None:
    row = _row()

    await audit.record(row)

    page = await audit.page(start=None, end=None, after_id=None, limit=10)
    assert [e.classification_id for e in page.events] == [row.classification_id]
    assert await asyncio.to_thread(_count, database_url) == 1


async def test_a_caller_that_gives_up_still_gets_its_record_written(audit: AuditLog, database_url: str) -> None:
    task = asyncio.create_task(audit.record(_row()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await audit.close()

    assert await asyncio.to_thread(_count, database_url) == 1


async def test_a_failed_write_fails_every_waiting_caller(audit: AuditLog) -> None:
    duplicate = new_id()
    await audit.record(_row(classification_id=duplicate))

    results = await asyncio.gather(
        audit.record(_row(classification_id=duplicate)), audit.record(_row()), return_exceptions=True
    )

    # The batch is one transaction: a failure rolls back all of it, and nobody is told "written".
    assert all(isinstance(r, Unavailable) for r in results)
    page = await audit.page(start=None, end=None, after_id=None, limit=10)
    assert len(page.events) == 1
    # A bad record is no fault of the store: it stays available (and the server SERVING).
    assert audit.available
    await audit.record(_row())


async def test_overload_is_refused_not_queued_forever(database_url: str) -> None:
    engine = await asyncio.to_thread(open_database, database_url)
    log = AuditLog(engine, SECRET, max_batch_records=1, max_pending_records=2)
    try:
        results = await asyncio.gather(*(log.record(_row()) for _ in range(10)), return_exceptions=True)
    finally:
        await log.close()
        engine.dispose()

    refused = [r for r in results if isinstance(r, Unavailable)]
    assert refused
    assert len(refused) < 10


async def test_a_closed_log_refuses_new_records(audit: AuditLog) -> None:
    await audit.close()

    with pytest.raises(Unavailable, match="shutting down"):
        await audit.record(_row())


async def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar_one() == 2  # FULL
    engine.dispose()


@pytest.mark.postgres
async def test_the_server_audits_to_postgresql(postgres_url: str, settings: Any) -> None:
    from server.app import TriageServer
    from server.calls import Role
    from tests.conftest import issue_test_key
    from tests.support import make_case
    from triage_client import AsyncTriageClient

    server = TriageServer(settings.model_copy(update={"database_url": postgres_url}))
    await server.start()
    try:
        key = await issue_test_key(server, Role.ADMIN)
        async with AsyncTriageClient(f"127.0.0.1:{server.port}", api_key=key) as client:
            classification = await client.classify(make_case("SOB", "70y", vitals={"spo2_percent": 85}))
            events = [e async for e in client.iter_audit_events()]
    finally:
        await server.stop(grace_seconds=0)

    assert [e.classification_id for e in events] == [classification.classification_id]
    assert events[0].esi_level == classification.esi_level == 1


async def test_a_locked_store_is_unavailable_until_a_probe_finds_it_back(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    engine = await asyncio.to_thread(open_database, migrated_sqlite(path))
    changes: list[bool] = []
    log = AuditLog(engine, SECRET, probe_seconds=0.1, on_available=changes.append)
    lock = sqlite3.connect(path, isolation_level=None)
    try:
        await log.record(_row())
        # Another process holds the write lock past the busy timeout: nothing can be committed.
        lock.execute("BEGIN EXCLUSIVE")
        with pytest.raises(Unavailable):
            await log.record(_row())
        assert changes == [False]
        assert not log.available
        with pytest.raises(Unavailable):
            await log.record(_row())  # refused without queueing

        lock.execute("ROLLBACK")

        async def available() -> bool:
            return log.available

        await eventually(available, within_seconds=10)
        await log.record(_row())
    finally:
        lock.close()
        await log.close()
        engine.dispose()

    assert changes == [False, True]
    assert await asyncio.to_thread(_count, f"sqlite:///{path}") == 2
