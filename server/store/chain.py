"""The audit log's hash chain: evidence that no record was changed, removed, reordered or inserted.

Each writer (one per server process, and a new one after a failed commit)
numbers its records 1, 2, 3 ... and links each to the one before:

    link(n) = HMAC-SHA256(server secret, link(n-1) | writer | n | content(n))

with link(0) derived from the writer's id. Writers never share a chain, so
processes and replicas write concurrently without coordinating; each
writer's last number and link are also kept in `audit_writers`, updated in
the same transaction as its records, so that records removed from a chain's
end are noticed too. Without the secret nobody can make a link that verifies.
A writer links under its process's active secret, whose id its checkpoint
records, so that chains verify across rotations of the secret (key ring).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, func, or_
from sqlmodel import Session, col, select

from server.secret import SecretRing
from server.store.models import AuditEvent, AuditWriter

# The columns a link covers: all but the chain's own.
CHAIN_COLUMNS = ("writer_id", "writer_seq", "chain_link")
CONTENT_COLUMNS: tuple[str, ...] = tuple(
    column.name
    for column in AuditEvent.__table__.columns  # type: ignore[attr-defined]
    if column.name not in CHAIN_COLUMNS
)


def content(values: Iterable[Any]) -> bytes:
    """A record's values, in CONTENT_COLUMNS' order, as canonical bytes: the same written and read back."""
    return json.dumps([_canonical(value) for value in values], separators=(",", ":")).encode()


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        # SQLite gives back naive UTC, PostgreSQL aware in the session's zone: both become UTC text.
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, float):
        return repr(value)
    return value


def genesis(secret: bytes, writer_id: str) -> str:
    return hmac.new(secret, f"triage-audit-chain-v1|{writer_id}".encode(), hashlib.sha256).hexdigest()


def link(secret: bytes, previous: str, writer_id: str, seq: int, record: bytes) -> str:
    material = f"{previous}|{writer_id}|{seq}|".encode() + record
    return hmac.new(secret, material, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Problem:
    """A record that does not verify, and what is wrong with it."""

    classification_id: str
    writer_id: str
    writer_seq: int
    what: str

    def __str__(self) -> str:
        return f"record {self.classification_id} (writer {self.writer_id}, #{self.writer_seq}): {self.what}"


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of `audit verify`: records checked, records older than the chain, and every problem."""

    records: int
    unchained: int
    writers: int
    problems: list[Problem]


def verify(
    ring: SecretRing,
    rows: Iterable[AuditEvent],
    checkpoints: Mapping[str, tuple[int, str]],
    anchors: Mapping[str, tuple[int, str]],
    secret_ids: Mapping[str, str],
    *,
    ranged: bool = False,
) -> Verified:
    """Checks `rows`, ordered by writer and number, against their links and the writers' checkpoints.

    `anchors` gives, where a chain's checked part starts after its first record
    (a range, or records purged), the number and link of the record before it;
    `secret_ids` the id of the secret each writer linked under ("" if not recorded).
    """
    problems: list[Problem] = []
    records = unchained = 0
    seen: set[str] = set()
    for writer_id, chain in _by_writer(rows):
        records += len(chain)
        if writer_id is None:
            unchained += len(chain)
            continue
        seen.add(writer_id)
        anchor = anchors.get(writer_id)
        key_id = secret_ids.get(writer_id, ring.active_id)
        secret = _legacy_secret(ring, writer_id, chain[0], anchor) if key_id == "" else ring.get(key_id)
        if secret is None:
            first = chain[0]
            unknown = f"its chain is linked under server secret {key_id}, which is not in the key ring: add it back"
            problems.append(Problem(first.classification_id, writer_id, first.writer_seq or 0, unknown))
            continue
        problems += _verify_chain(secret, writer_id, chain, anchor, checkpoints.get(writer_id))
    for writer_id, (last_seq, _) in checkpoints.items():
        start = anchors.get(writer_id, (0, ""))[0]
        if writer_id not in seen and last_seq > start and not ranged:
            missing = f"records #{start + 1} to #{last_seq} of this writer are missing"
            problems.append(Problem("-", writer_id, last_seq, missing))
    return Verified(records, unchained, len(seen), problems)


def _verify_chain(
    secret: bytes,
    writer_id: str,
    chain: list[AuditEvent],
    anchor: tuple[int, str] | None,
    checkpoint: tuple[int, str] | None,
) -> list[Problem]:
    problems: list[Problem] = []
    expected_seq, previous = anchor if anchor is not None else (0, genesis(secret, writer_id))
    for event in chain:
        seq = event.writer_seq or 0
        where = (event.classification_id, writer_id, seq)
        if seq > expected_seq + 1:  # the gap
            missing = f"#{expected_seq + 1}" if seq == expected_seq + 2 else f"#{expected_seq + 1} to #{seq - 1}"
            problems.append(Problem(*where, f"the records before it ({missing}) were removed"))
        elif seq <= expected_seq:
            problems.append(Problem(*where, "its number repeats an earlier record's: inserted or reordered"))
        stored = event.chain_link or ""
        # After a gap the link before it is gone, so this record's own link cannot be checked.
        gap = seq > expected_seq + 1
        if not gap and not hmac.compare_digest(
            stored, link(secret, previous, writer_id, seq, content(getattr(event, name) for name in CONTENT_COLUMNS))
        ):
            problems.append(Problem(*where, "its content or place does not match its link: changed or reordered"))
        expected_seq, previous = max(seq, expected_seq), stored
    if checkpoint is None:
        first = chain[0]
        problems.append(Problem(first.classification_id, writer_id, first.writer_seq or 0, "unknown writer: inserted"))
    elif checkpoint[0] > expected_seq:
        removed = f"the records after it, to #{checkpoint[0]}, were removed"
        problems.append(Problem(chain[-1].classification_id, writer_id, expected_seq, removed))
    return problems


def _legacy_secret(ring: SecretRing, writer_id: str, first: AuditEvent, anchor: tuple[int, str] | None) -> bytes:
    """For a chain from before secret ids were recorded: the ring's secret that links its first record."""
    for _, secret in ring:
        expected_seq, previous = anchor if anchor is not None else (0, genesis(secret, writer_id))
        values = (getattr(first, name) for name in CONTENT_COLUMNS)
        if first.writer_seq == expected_seq + 1 and hmac.compare_digest(
            first.chain_link or "", link(secret, previous, writer_id, expected_seq + 1, content(values))
        ):
            return secret
    # None links it: verifying under the active secret names the record.
    return ring.active


def _by_writer(rows: Iterable[AuditEvent]) -> Iterator[tuple[str | None, list[AuditEvent]]]:
    current: list[AuditEvent] = []
    writer: str | None = None
    for row in rows:
        if current and row.writer_id != writer:
            yield writer, current
            current = []
        writer = row.writer_id
        current.append(row)
    if current:
        yield writer, current


def verify_database(engine: Engine, ring: SecretRing, since: datetime | None = None) -> Verified:
    """Verifies the audit records in the database: all of them, or those recorded at or after `since`."""
    with Session(engine) as session:
        writers = session.exec(select(AuditWriter)).all()
        checkpoints = {w.writer_id: (w.last_seq, w.last_link) for w in writers}
        secret_ids = {w.writer_id: w.secret_key_id for w in writers}
        # Where retention purged a chain's start, verifying starts from the purged record's link.
        anchors = {w.writer_id: (w.purged_seq, w.purged_link) for w in writers if w.purged_seq > 0}
        query = select(AuditEvent).order_by(col(AuditEvent.writer_id), col(AuditEvent.writer_seq))
        if since is not None:
            query = query.where(col(AuditEvent.recorded_at) >= since)
            anchors |= _anchors(session, since)
        rows = session.exec(query.execution_options(yield_per=2_000))
        verified = verify(ring, rows, checkpoints, anchors, secret_ids, ranged=since is not None)
    verified.problems.sort(key=lambda problem: (problem.classification_id, problem.writer_seq))
    return verified


def _anchors(session: Session, since: datetime) -> dict[str, tuple[int, str]]:
    """For each writer with records from `since` on, its record just before them (number and link)."""
    firsts = session.exec(
        select(AuditEvent.writer_id, func.min(AuditEvent.writer_seq))
        .where(col(AuditEvent.recorded_at) >= since, col(AuditEvent.writer_id).is_not(None))
        .group_by(col(AuditEvent.writer_id))
    ).all()
    wanted = [(writer, seq - 1) for writer, seq in firsts if writer is not None and seq is not None and seq > 1]
    if not wanted:
        return {}
    before = session.exec(
        select(AuditEvent.writer_id, AuditEvent.writer_seq, AuditEvent.chain_link).where(
            or_(*(and_(col(AuditEvent.writer_id) == w, col(AuditEvent.writer_seq) == n) for w, n in wanted))
        )
    ).all()
    return {writer: (seq, link) for writer, seq, link in before if writer and seq is not None and link}
