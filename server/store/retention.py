"""Retention: what is deleted when, by `triage-server purge` and once a day by every server.

Stored cases (the only patient content kept, encrypted) go first, after
TRIAGE_STORED_CASE_RETENTION_DAYS; usage detail after
TRIAGE_USAGE_RETENTION_DAYS; audit records after TRIAGE_AUDIT_RETENTION_DAYS
(7 years by default). Audit records are purged from the start of each
writer's chain, and the link of the last purged record is kept as the
chain's new anchor, so that what remains still verifies. Purging again
deletes nothing more: several servers may purge at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, select, text, update

from server.ids import new_id
from server.store.models import AuditEvent, AuditWriter, StoredCase, UsageTotal

_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_WRITERS = AuditWriter.__table__  # type: ignore[attr-defined]
_CASES = StoredCase.__table__  # type: ignore[attr-defined]
_USAGE = UsageTotal.__table__  # type: ignore[attr-defined]
# Serializes purges on PostgreSQL (other applications must not use this number).
_ADVISORY_LOCK = 0x7472696167655F70  # "triage_p"


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each kind of record is kept, in days."""

    stored_case_days: int
    usage_days: int
    audit_days: int


@dataclass(frozen=True, slots=True)
class Purged:
    """How many rows one purge deleted, by kind."""

    stored_cases: int
    usage_rows: int
    audit_records: int


def purge(engine: Engine, retention: Retention, now: datetime | None = None) -> Purged:
    """Deletes what is older than its retention."""
    now = now or datetime.now(UTC)
    # Patient content first, in its own transaction: a runtime role that may not delete
    # audit records (docs/data.md) still purges stored cases and usage detail.
    with engine.begin() as connection:
        _take_turns(connection)
        # Classification ids sort by time: the cases of classifications older than the cutoff.
        # A retention reaching back before 1970 (a century, "keep them") deletes nothing.
        cutoff_ms = max(0, int((now.timestamp() - retention.stored_case_days * 86_400) * 1000))
        case_cutoff = new_id(cutoff_ms)[:10]
        cases = connection.execute(delete(_CASES).where(_CASES.c.classification_id < case_cutoff)).rowcount
        usage_cutoff = (now - timedelta(days=retention.usage_days)).date()
        usage = connection.execute(delete(_USAGE).where(_USAGE.c.day < usage_cutoff)).rowcount
    with engine.begin() as connection:
        if _take_turns(connection):
            # The append-only trigger lets retention, and nothing else, delete audit records.
            connection.execute(text("SET LOCAL triage.audit_purge = 'on'"))
        audit = _purge_audit(connection, now - timedelta(days=retention.audit_days))
    return Purged(stored_cases=cases, usage_rows=usage, audit_records=audit)


def _take_turns(connection: Connection) -> bool:
    """On PostgreSQL, waits for any other purge's transaction; whether it is PostgreSQL."""
    if connection.dialect.name != "postgresql":
        return False
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    return True


def _purge_audit(connection: Connection, cutoff: datetime) -> int:
    """Deletes each chain's records up to its last one recorded before `cutoff`, keeping that one's link."""
    events = _EVENTS.c
    ends = connection.execute(
        select(events.writer_id, func.max(events.writer_seq))
        .where(events.recorded_at < cutoff, events.writer_id.is_not(None))
        .group_by(events.writer_id)
    ).all()
    deleted = 0
    for writer_id, last_seq in ends:
        link = connection.execute(
            select(events.chain_link).where(events.writer_id == writer_id, events.writer_seq == last_seq)
        ).scalar_one()
        deleted += connection.execute(
            delete(_EVENTS).where(events.writer_id == writer_id, events.writer_seq <= last_seq)
        ).rowcount
        connection.execute(
            update(_WRITERS).where(_WRITERS.c.writer_id == writer_id).values(purged_seq=last_seq, purged_link=link)
        )
    # Records from before the chain have nothing to anchor.
    deleted += connection.execute(
        delete(_EVENTS).where(events.recorded_at < cutoff, events.writer_id.is_(None))
    ).rowcount
    return deleted
