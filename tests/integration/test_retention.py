"""Retention: old stored cases, usage detail and audit records are deleted, and the chain still verifies."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from server.app import TriageServer
from server.config import Settings
from server.ids import new_id
from server.secret import SecretRing
from server.store import chain, retention
from server.store.audit import AuditLog, SealedCase
from server.store.database import open_database
from server.store.models import AuditEvent, StoredCase, UsageTotal
from server.store.retention import Retention
from tests.integration.test_audit_store import _row
from tests.support import migrated_sqlite

SECRET = b"retention-test-secret"
RING = SecretRing(SECRET)
NOW = datetime.now(UTC)
RETENTION = Retention(stored_case_days=30, usage_days=400, audit_days=7 * 365)
# Ages of the records each writer wrote, oldest first, in days.
AGES_DAYS = (3000, 2600, 2556, 40, 31, 29, 1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    url = migrated_sqlite(tmp_path / "r.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = await asyncio.to_thread(open_database, url)
    # Two writers, each with records and stored cases of every age, and usage rows of every age.
    for _ in range(2):
        log = AuditLog(engine, SECRET)
        for age in AGES_DAYS:
            at = NOW - timedelta(days=age)
            classification_id = new_id(int(at.timestamp() * 1000))
            case = SealedCase(classification_id, "key", "f" * 16, b"n" * 12, b"sealed")
            await log.record(_row(classification_id=classification_id, recorded_at=at), case)
        await log.close()
    with Session(engine) as session:
        for age in (500, 401, 399, 0):
            day = (NOW - timedelta(days=age)).date()
            session.add(UsageTotal(key_id="key", day=day, step=2, backend="openai:gpt", requests=1))
        session.commit()
    yield engine
    engine.dispose()


def _count(engine: Engine, model: type[AuditEvent] | type[StoredCase] | type[UsageTotal]) -> int:
    with engine.connect() as connection:
        count: int = connection.execute(select(func.count()).select_from(model)).scalar_one()
    return count


def test_purge_deletes_what_is_past_retention_and_the_chain_still_verifies(engine: Engine) -> None:
    purged = retention.purge(engine, RETENTION, NOW)

    # Cases older than 30 days (3000 ... 31), usage before 400 days, audit records older than 7 years.
    assert purged == retention.Purged(stored_cases=2 * 5, usage_rows=2, audit_records=2 * 3)
    assert (_count(engine, StoredCase), _count(engine, UsageTotal), _count(engine, AuditEvent)) == (4, 2, 8)
    verified = chain.verify_database(engine, RING)
    assert (verified.records, verified.problems) == (8, [])
    with engine.connect() as connection:
        oldest = connection.execute(select(func.min(UsageTotal.day))).scalar_one()
    assert oldest > NOW.date() - timedelta(days=400)

    assert retention.purge(engine, RETENTION, NOW) == retention.Purged(0, 0, 0)
    assert chain.verify_database(engine, RING).problems == []


def test_a_retention_of_a_century_deletes_no_stored_case(engine: Engine) -> None:
    # Its cutoff falls before 1970, where a classification id cannot point: nothing is older.
    century = dataclasses.replace(RETENTION, stored_case_days=36_525)

    assert retention.purge(engine, century, NOW).stored_cases == 0
    assert _count(engine, StoredCase) == 2 * len(AGES_DAYS)


def test_a_chain_purged_whole_still_verifies(engine: Engine) -> None:
    retention.purge(engine, dataclasses.replace(RETENTION, audit_days=0), NOW + timedelta(days=1))

    verified = chain.verify_database(engine, RING)
    assert (verified.records, verified.problems) == (0, [])


async def test_a_server_purges_when_it_starts(tmp_path: Path, settings: Settings) -> None:
    url = migrated_sqlite(tmp_path / "old.db")
    engine = await asyncio.to_thread(open_database, url)
    log = AuditLog(engine, SECRET)
    old = NOW - timedelta(days=45)
    old_id = new_id(int(old.timestamp() * 1000))
    await log.record(_row(classification_id=old_id, recorded_at=old), SealedCase(old_id, "k", "f" * 16, b"n", b"c"))
    await log.close()

    server = TriageServer(settings.model_copy(update={"database_url": url}))
    await server.start()
    await server.stop(grace_seconds=0)

    assert (_count(engine, StoredCase), _count(engine, AuditEvent)) == (0, 1)
    engine.dispose()
