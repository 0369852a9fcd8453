"""The audit log's hash chain: tampering directly in the database is named by `audit verify`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from server.ids import new_id
from server.secret import SecretRing
from server.store import chain
from server.store.audit import AuditLog
from server.store.database import open_database
from tests.integration.test_audit_store import _row

SECRET = b"chain-test-secret"
RING = SecretRing(SECRET)
WRITERS = 2
RECORDS_PER_WRITER = 30


@dataclass
class Written:
    engine: Engine
    # Classification ids by writer, in the order each wrote them.
    ids: list[list[str]]


@pytest.fixture
async def written(database_url: str) -> AsyncIterator[Written]:
    """Two writers (two server processes, say) recording concurrently, in batches."""
    engine = await asyncio.to_thread(open_database, database_url)
    logs = [AuditLog(engine, SECRET, max_batch_records=7) for _ in range(WRITERS)]
    ids: list[list[str]] = [[] for _ in logs]
    start = datetime.now(UTC) - timedelta(minutes=10)

    async def write(index: int, log: AuditLog) -> None:
        for n in range(RECORDS_PER_WRITER):
            row = _row(recorded_at=start + timedelta(seconds=n), case_ref=f"w{index}-{n}", confidence=0.1 * n)
            ids[index].append(row.classification_id)
            await log.record(row)

    await asyncio.gather(*(write(i, log) for i, log in enumerate(logs)))
    for log in logs:
        await log.close()
    yield Written(engine, ids)
    engine.dispose()


def tamper(engine: Engine, statement: str, **values: Any) -> None:
    """Changes the table as someone with write access to the database could (past the trigger, on PostgreSQL)."""
    with engine.begin() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        connection.execute(text(statement), values)
        if postgres:
            connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))


def problems(engine: Engine, since: datetime | None = None) -> list[tuple[str, str]]:
    verified = chain.verify_database(engine, RING, since)
    return [(p.classification_id, p.what) for p in verified.problems]


def test_an_untouched_log_verifies(written: Written) -> None:
    verified = chain.verify_database(written.engine, RING)
    assert (verified.records, verified.writers, verified.problems) == (WRITERS * RECORDS_PER_WRITER, WRITERS, [])


def test_with_another_secret_no_chain_verifies(written: Written) -> None:
    verified = chain.verify_database(written.engine, SecretRing(b"not-the-secret"))
    # Each chain names the secret it needs, which is not in this ring.
    assert len(verified.problems) == WRITERS
    assert all(f"server secret {RING.active_id}, which is not in the key ring" in p.what for p in verified.problems)


@pytest.mark.parametrize(
    "change",
    ["esi_level = 5", "finding_codes = ''", "recorded_at = recorded_at", "confidence = 0.95", "key_id = 'someone'"],
)
def test_a_changed_record_is_named(written: Written, change: str) -> None:
    target = written.ids[0][12]
    if change == "recorded_at = recorded_at":
        # A time moved by a second.
        with written.engine.connect() as connection:
            moved = _recorded_at(connection, target) + timedelta(seconds=1)
        tamper(written.engine, "UPDATE audit_events SET recorded_at = :at WHERE classification_id = :id",
               at=_stored_time(written.engine, moved), id=target)  # fmt: skip
    else:
        tamper(written.engine, f"UPDATE audit_events SET {change} WHERE classification_id = :id", id=target)

    assert problems(written.engine) == [(target, "its content or place does not match its link: changed or reordered")]


def test_a_removed_record_is_named_by_the_one_after_it(written: Written) -> None:
    removed, after = written.ids[1][5], written.ids[1][6]
    tamper(written.engine, "DELETE FROM audit_events WHERE classification_id = :id", id=removed)

    [(named, what)] = problems(written.engine)
    assert named == after
    assert "the records before it (#6) were removed" in what


def test_records_removed_from_the_end_are_noticed(written: Written) -> None:
    last_kept = written.ids[0][-3]
    for removed in written.ids[0][-2:]:
        tamper(written.engine, "DELETE FROM audit_events WHERE classification_id = :id", id=removed)

    [(named, what)] = problems(written.engine)
    assert named == last_kept
    assert f"to #{RECORDS_PER_WRITER}, were removed" in what


def test_reordered_records_are_named(written: Written) -> None:
    first, second = written.ids[0][3], written.ids[0][4]
    tamper(written.engine, "UPDATE audit_events SET writer_seq = -1 WHERE classification_id = :id", id=first)
    tamper(written.engine, "UPDATE audit_events SET writer_seq = 4 WHERE classification_id = :id", id=second)
    tamper(written.engine, "UPDATE audit_events SET writer_seq = 5 WHERE classification_id = :id", id=first)

    named = [named for named, _ in problems(written.engine)]
    # Both swapped records, and the one after them, whose link no longer follows its predecessor's
    # (ids made in the same millisecond do not sort in the order they were made: compared as a set).
    assert sorted(named) == sorted([first, second, written.ids[0][5]])


def test_an_inserted_record_is_named(written: Written) -> None:
    # A plausible record with a made-up link, appended to a real writer's chain and to a new one.
    with written.engine.connect() as connection:
        writer, seq = connection.execute(
            text("SELECT writer_id, writer_seq FROM audit_events WHERE classification_id = :id"),
            {"id": written.ids[0][-1]},
        ).one()
    forged = [new_id(), new_id()]
    for classification_id, writer_id, writer_seq in ((forged[0], writer, seq + 1), (forged[1], new_id(), 1)):
        row = dataclasses.asdict(_row(classification_id=classification_id)) | {
            "writer_id": writer_id,
            "writer_seq": writer_seq,
            "chain_link": "0" * 64,
        }
        with written.engine.begin() as connection:
            columns = ", ".join(row)
            connection.execute(
                text(f"INSERT INTO audit_events ({columns}) VALUES ({', '.join(':' + c for c in row)})"),
                row | {"recorded_at": _stored_time(written.engine, row["recorded_at"])},
            )

    named = {named for named, _ in problems(written.engine)}
    assert named == set(forged)


def test_a_range_is_verified_from_the_record_before_it(written: Written) -> None:
    with written.engine.connect() as connection:
        since = _recorded_at(connection, written.ids[0][20])
    tamper(written.engine, "UPDATE audit_events SET esi_level = 1 WHERE classification_id = :id", id=written.ids[0][2])

    assert problems(written.engine, since) == []  # the change is before the range
    verified = chain.verify_database(written.engine, RING, since)
    assert verified.records == WRITERS * (RECORDS_PER_WRITER - 20)
    assert [named for named, _ in problems(written.engine)] == [written.ids[0][2]]


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET esi_level = 5",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DELETE FROM audit_writers",
    ],
)
async def test_postgresql_refuses_to_change_or_delete_audit_records(postgres_url: str, statement: str) -> None:
    engine = await asyncio.to_thread(open_database, postgres_url)
    log = AuditLog(engine, SECRET)
    await log.record(_row())
    await log.close()
    try:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
        assert chain.verify_database(engine, RING).problems == []
    finally:
        engine.dispose()


def _recorded_at(connection: Connection, classification_id: str) -> datetime:
    value = connection.execute(
        text("SELECT recorded_at FROM audit_events WHERE classification_id = :id"), {"id": classification_id}
    ).scalar_one()
    if isinstance(value, str):  # SQLite, through text()
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value


def _stored_time(engine: Engine, value: datetime) -> Any:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else value
