"""The audit log, written with group commit and read in pages.

Every classification is awaited into the log before its response is sent.
Records arriving while a transaction is being committed wait and go together
in the next one, so throughput grows with concurrency while each
acknowledged record is durable. Database calls run on a dedicated writer
thread (and reads on the default executor), never on the event loop. The
writer links each record into this process's hash chain (server/store/chain.py)
in commit order.

When a batch fails because the store cannot be reached or written (not for
a bad record), the log reports itself unavailable: records are refused at
once, and a probe on the writer's connection finds the store back, after
which the log reports itself available. The server turns these reports into
gRPC health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, exc
from sqlalchemy.pool import PoolProxiedConnection
from sqlmodel import Session, col, select

from server import metrics
from server.errors import Unavailable
from server.group_commit import GroupCommit
from server.ids import new_id
from server.secret import secret_id
from server.store import chain
from server.store.models import AuditEvent, AuditWriter, StoredCase

log = logging.getLogger("triage.audit")

_TABLE = AuditEvent.__table__  # type: ignore[attr-defined]
# What a caller gives for a record; the writer adds the chain's columns.
COLUMNS = chain.CONTENT_COLUMNS
_WRITERS = AuditWriter.__table__  # type: ignore[attr-defined]
_CASES = StoredCase.__table__  # type: ignore[attr-defined]
CASE_COLUMNS: tuple[str, ...] = tuple(column.name for column in _CASES.columns)
_RECORDED_AT = COLUMNS.index("recorded_at")
# SQLAlchemy stores SQLite timestamps as this text; other databases take datetimes.
_SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"


def _insert_statement(table: str, columns: tuple[str, ...], marker: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"


# A record waiting for its batch: its row, the content its chain link hashes, and its sealed case if any.
_Pending = tuple[tuple[Any, ...], bytes, tuple[Any, ...] | None]

_UNAVAILABLE = "the audit store is unavailable, so the classification was not recorded; retry"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One classification as the audit log keeps it: codes, level and a keyed hash of the case, never its text."""

    classification_id: str
    recorded_at: datetime
    method: str
    esi_level: int
    decided_at: int
    # Space-separated finding codes.
    finding_codes: str
    ruleset_version: str
    input_hmac_sha256: str
    confidence: float
    case_ref: str
    key_id: str
    request_id: str
    cost_usd_micros: int
    input_tokens: int
    output_tokens: int
    cache_hit: bool


@dataclass(frozen=True, slots=True)
class SealedCase:
    """A classified case, encrypted, kept so that Explain can take its classification id later."""

    classification_id: str
    # Who classified it: only they (or an admin) may have it explained.
    account: str
    key_fingerprint: str
    nonce: bytes
    ciphertext: bytes


# A column added to the table and not to these types fails here, at import, not at the first write.
for _type, _columns in ((AuditRecord, COLUMNS), (SealedCase, CASE_COLUMNS)):
    if tuple(field.name for field in fields(_type)) != _columns:
        raise TypeError(f"{_type.__name__}'s fields are not the columns {_columns}")


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of audit events and whether more follow."""

    events: list[AuditEvent]
    has_more: bool


class AuditLog:
    """Durable, batched writes of audit records; paged reads."""

    def __init__(
        self,
        engine: Engine,
        secret: bytes,
        *,
        max_batch_records: int = 512,
        max_pending_records: int = 10_000,
        probe_seconds: float = 1.0,
        on_available: Callable[[bool], None] | None = None,
    ) -> None:
        self._engine = engine
        # The hot path writes with one prepared DBAPI executemany per batch:
        # SQLAlchemy Core's per-row bind processing cost more than the commit.
        marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._insert = _insert_statement(_TABLE.name, (*COLUMNS, *chain.CHAIN_COLUMNS), marker)
        self._checkpoint = (
            _insert_statement(
                _WRITERS.name,
                ("writer_id", "last_seq", "last_link", "updated_at", "purged_seq", "purged_link", "secret_key_id"),
                marker,
            )
            + " ON CONFLICT (writer_id) DO UPDATE SET last_seq = excluded.last_seq,"
            " last_link = excluded.last_link, updated_at = excluded.updated_at"
        )
        # This process's chain: touched only by the writer thread. Its secret's id goes in its checkpoint.
        self._secret = secret
        self._secret_id = secret_id(secret)
        self._start_chain()
        # Stored (encrypted) cases go in the same transaction as their audit records.
        self._insert_case = _insert_statement(_CASES.name, CASE_COLUMNS, marker)
        self._sqlite = engine.dialect.name == "sqlite"
        # SQLite: taking the write lock shows that a commit could happen; PostgreSQL: a round trip.
        self._probe_statement = "BEGIN IMMEDIATE" if self._sqlite else "SELECT 1"
        dbapi = engine.dialect.dbapi
        # The store's faults (unreachable, locked, read-only), as opposed to a bad record's.
        self._store_faults: tuple[type[BaseException], ...] = (exc.OperationalError, exc.InterfaceError)
        if dbapi is not None:
            self._store_faults += (dbapi.OperationalError, dbapi.InterfaceError)
        self.available = True
        self._on_available = on_available
        self._probe_seconds = probe_seconds
        self._prober: asyncio.Task[None] | None = None
        # The writer thread's own connection, taken from the pool on first use.
        self._connection: PoolProxiedConnection | None = None
        self._max_pending = max_pending_records
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._commits: GroupCommit[_Pending] = GroupCommit(
            self._write, max_batch=max_batch_records, executor=self._writer, on_batch=self._committed
        )
        self._closed = False
        # Counters for tests and metrics: transactions committed, records written.
        self.commits = 0
        self.records_written = 0

    async def record(self, record: AuditRecord, case: SealedCase | None = None) -> None:
        """Returns once the record is committed; raises Unavailable if it could not be.

        The case, if given, is written in the same transaction. A caller that
        is cancelled while waiting still gets its record written: it is queued.
        """
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another replica")
        if not self.available:
            raise Unavailable(_UNAVAILABLE)
        if self._commits.pending >= self._max_pending:
            raise Unavailable("the audit store is overloaded; retry shortly")
        case_values = tuple(getattr(case, name) for name in CASE_COLUMNS) if case is not None else None
        values = [getattr(record, name) for name in COLUMNS]
        recorded_at = values[_RECORDED_AT] = record.recorded_at.astimezone(UTC)
        content = chain.content(values)
        if self._sqlite:
            values[_RECORDED_AT] = recorded_at.strftime(_SQLITE_TIMESTAMP)
        metrics.AUDIT_PENDING_RECORDS.inc()
        try:
            await self._commits.submit((tuple(values), content, case_values))
        except Exception:  # noqa: BLE001 - what went wrong is logged once per batch, in _committed
            raise Unavailable(_UNAVAILABLE) from None

    def _committed(self, records: int, error: Exception | None) -> None:
        """A batch's outcome, on the event loop: metrics, the log, and the store's availability."""
        metrics.AUDIT_PENDING_RECORDS.dec(records)
        if error is None:
            self._set_available(True)
            return
        metrics.AUDIT_COMMIT_FAILURES.inc()
        log.error("audit write failed", extra={"fields": {"error_type": type(error).__name__, "records": records}})
        if isinstance(error, self._store_faults):
            self._became_unavailable()

    def _became_unavailable(self) -> None:
        if self.available:
            self._set_available(False)
            self._prober = asyncio.create_task(self._probe_until_available())

    def _set_available(self, available: bool) -> None:
        if available == self.available:
            return
        self.available = available
        if available:
            log.warning("audit store available again")
        else:
            log.error(
                "audit store unavailable: refusing records", extra={"fields": {"probe_seconds": self._probe_seconds}}
            )
        if self._on_available is not None:
            self._on_available(available)

    async def _probe_until_available(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.available and not self._closed:
            await asyncio.sleep(self._probe_seconds)
            try:
                await loop.run_in_executor(self._writer, self._probe)
            except Exception:  # noqa: BLE001 - still unavailable: probe again later
                continue
            self._set_available(True)

    def _probe(self) -> None:
        """One transaction that writes nothing, on the writer thread's connection."""
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        connection = self._connection
        cursor = connection.cursor()
        try:
            cursor.execute(self._probe_statement)
        except Exception:
            self._drop_connection()
            raise
        finally:
            cursor.close()
        connection.rollback()

    def _drop_connection(self) -> None:
        """Rolls back; a connection that cannot even do that is unusable and replaced next time."""
        if self._connection is None:
            return
        try:
            self._connection.rollback()
        except Exception:  # noqa: BLE001 - the connection is unusable; drop it
            self._connection.invalidate()
            self._connection = None

    def _start_chain(self) -> None:
        self._writer_id = new_id()
        self._seq = 0
        self._link = chain.genesis(self._secret, self._writer_id)

    def _write(self, batch: Sequence[_Pending]) -> None:
        """One transaction for the batch, on the writer thread's connection."""
        seq, link, rows = self._seq, self._link, []
        for values, content, _ in batch:
            seq += 1
            link = chain.link(self._secret, link, self._writer_id, seq, content)
            rows.append((*values, self._writer_id, seq, link))
        cases = [case for _, _, case in batch if case is not None]
        now = datetime.now(UTC)
        updated_at = now.strftime(_SQLITE_TIMESTAMP) if self._sqlite else now
        checkpoint = (self._writer_id, seq, link, updated_at, 0, "", self._secret_id)
        started = time.perf_counter()
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        connection = self._connection
        cursor = connection.cursor()
        try:
            cursor.executemany(self._insert, rows)
            if cases:
                cursor.executemany(self._insert_case, cases)
            cursor.execute(self._checkpoint, checkpoint)
            connection.commit()
        except Exception:
            # Whether the commit took effect is not known (a connection lost in it):
            # a new chain begins, so that the old one ends where the database says it does.
            self._start_chain()
            # Roll back what the batch wrote; a broken connection is replaced next time.
            self._drop_connection()
            raise
        finally:
            cursor.close()
        self._seq, self._link = seq, link
        self.commits += 1
        self.records_written += len(rows)
        metrics.AUDIT_COMMIT_LATENCY.observe(time.perf_counter() - started)
        metrics.AUDIT_BATCH_RECORDS.observe(len(rows))

    async def stored_case(self, classification_id: str) -> StoredCase | None:
        return await asyncio.to_thread(self._stored_case, classification_id)

    def _stored_case(self, classification_id: str) -> StoredCase | None:
        with Session(self._engine) as session:
            return session.get(StoredCase, classification_id)

    async def page(
        self,
        *,
        start: datetime | None,
        end: datetime | None,
        after_id: str | None,
        limit: int,
    ) -> AuditPage:
        """Events in [start, end), oldest first, after the given id."""
        return await asyncio.to_thread(self._page, start, end, after_id, limit)

    def _page(self, start: datetime | None, end: datetime | None, after_id: str | None, limit: int) -> AuditPage:
        query = select(AuditEvent).order_by(col(AuditEvent.classification_id)).limit(limit + 1)
        if start is not None:
            query = query.where(col(AuditEvent.recorded_at) >= start)
        if end is not None:
            query = query.where(col(AuditEvent.recorded_at) < end)
        if after_id is not None:
            query = query.where(col(AuditEvent.classification_id) > after_id)
        with Session(self._engine) as session:
            events: Sequence[AuditEvent] = session.exec(query).all()
        return AuditPage(events=list(events[:limit]), has_more=len(events) > limit)

    async def close(self) -> None:
        """Writes what is pending, then stops the writer thread."""
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
        await self._commits.close()
        if self._connection is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._connection.close)
            self._connection = None
        self._writer.shutdown(wait=True)
