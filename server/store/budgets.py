"""Monthly budget counters and the holds of model calls in flight, shared by every process and replica.

Synchronous: called from worker threads. Each operation is one short
transaction. A reservation is a conditional UPDATE (reserved + x WHERE
spent + reserved + x <= limit): PostgreSQL checks and changes the row under
its row lock in one statement; SQLite's transactions start with BEGIN
IMMEDIATE, taking its single writer's lock first. Rows are locked in one
order everywhere (a hold, then the key's counters, the global counters last),
so transactions never deadlock and the global row, which every model call
changes, is held as briefly as possible.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, Date, Engine, String, Update, delete, func, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from server.store.models import BudgetHold, BudgetMonth, UsageTotal

GLOBAL = ""  # the global budget's key_id
_MONTHS = BudgetMonth.__table__  # type: ignore[attr-defined]
_HOLDS = BudgetHold.__table__  # type: ignore[attr-defined]
_USAGE = UsageTotal.__table__  # type: ignore[attr-defined]
# Expired holds released per transaction batch: a few at a time keeps each refresh short.
_RELEASE_BATCH = 100


@dataclass(frozen=True, slots=True)
class Hold:
    """A model call's worst case, held against the global budget and (unless key_id is "") its key's."""

    hold_id: str
    month: date
    key_id: str
    usd_micros: int


@dataclass(frozen=True, slots=True)
class Counters:
    spent_usd_micros: int
    reserved_usd_micros: int
    alerted_percent: int


class NoRoom(Exception):
    """A hold does not fit a budget; `scope` is "key" or "global"."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


class _NoRow(Exception):
    """A budget has no row for the month yet."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


class BudgetStore:
    """The budget_months and budget_holds tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._insert = sqlite.insert if self._sqlite else postgresql.insert

    def reserve(self, hold: Hold, expires_at: datetime, *, global_limit: int, key_limit: int | None) -> None:
        """Holds `hold` in its key's counters (within `key_limit` unless None) and the global ones; NoRoom if not.

        Either both counters take it and the hold is recorded, or nothing changes.
        """
        while True:
            try:
                with self._transaction() as connection:
                    connection.execute(
                        insert(_HOLDS).values(
                            hold_id=hold.hold_id,
                            month=hold.month,
                            key_id=hold.key_id,
                            usd_micros=hold.usd_micros,
                            expires_at=expires_at,
                        )
                    )
                    if hold.key_id and not self._take(connection, hold, hold.key_id, key_limit):
                        raise NoRoom("key")
                    if not self._take(connection, hold, GLOBAL, global_limit):
                        raise NoRoom("global")
                return
            except _NoRow as missing:
                # Made in a transaction of its own, so that a refusal does not undo it.
                self._open(hold.month, missing.key_id)

    def settle(self, hold: Hold, usd_micros: int) -> dict[str, Counters]:
        """Releases what is left of `hold` (unless its lease was released already) and counts `usd_micros` spent.

        Returns the counters after it, by key_id (the global budget's is "").
        """
        return self._release(hold, usd_micros)

    def _release(self, hold: Hold, usd_micros: int, *, expired_before: datetime | None = None) -> dict[str, Counters]:
        """Deletes the hold (if it is still there, and its lease ended before `expired_before` when given)."""
        release = delete(_HOLDS).where(_HOLDS.c.hold_id == hold.hold_id)
        if expired_before is not None:
            # Not one whose process renewed its lease since it was found expired.
            release = release.where(_HOLDS.c.expires_at < expired_before)
        with self._transaction() as connection:
            released = connection.execute(release.returning(_HOLDS.c.usd_micros)).first()
            return self._count(connection, hold, spent=usd_micros, freed=released[0] if released else 0)

    def draw(self, hold: Hold, usd_micros: int, expires_at: datetime) -> tuple[dict[str, Counters], bool]:
        """Counts `usd_micros` spent out of `hold`, which shrinks by as much and is leased until `expires_at`.

        Returns the counters after it and whether the hold was still there. A
        hold released meanwhile (its lease ran out) frees nothing: its amount
        went back to the budgets when it was released.
        """
        with self._transaction() as connection:
            drawn = connection.execute(
                _HOLDS.update()
                .where(_HOLDS.c.hold_id == hold.hold_id)
                .values(usd_micros=_HOLDS.c.usd_micros - usd_micros, expires_at=expires_at)
            ).rowcount
            return self._count(connection, hold, spent=usd_micros, freed=usd_micros if drawn else 0), bool(drawn)

    def _count(self, connection: Connection, hold: Hold, *, spent: int, freed: int) -> dict[str, Counters]:
        """Moves `freed` out of the reserved amounts and adds `spent` to the spent ones, of the hold's budgets."""
        after: dict[str, Counters] = {}
        for key_id in (hold.key_id, GLOBAL) if hold.key_id else (GLOBAL,):
            update = (
                _row(_MONTHS.update(), hold.month, key_id)
                .values(
                    spent_usd_micros=_MONTHS.c.spent_usd_micros + spent,
                    reserved_usd_micros=_MONTHS.c.reserved_usd_micros - freed,
                )
                .returning(_MONTHS.c.spent_usd_micros, _MONTHS.c.reserved_usd_micros, _MONTHS.c.alerted_percent)
            )
            after[key_id] = Counters(*connection.execute(update).one())
        return after

    def release_expired(self, now: datetime) -> int:
        """Releases holds whose lease ended before `now` (their process died mid-call); returns how many.

        Nothing is counted as spent for them: what a dead process spent is not
        known, and its usage was never written to the totals either.
        """
        query = select(_HOLDS).where(_HOLDS.c.expires_at < now).limit(_RELEASE_BATCH)
        with self._engine.connect() as connection:
            expired = [Hold(row.hold_id, row.month, row.key_id, row.usd_micros) for row in connection.execute(query)]
        for hold in expired:
            # One transaction each, in the same lock order as a settlement; one that another
            # process released (or that settled) meanwhile frees nothing twice.
            self._release(hold, 0, expired_before=now)
        return len(expired)

    def counters(self, month: date) -> dict[str, Counters]:
        """Every budget's counters in `month`, by key_id."""
        query = select(
            _MONTHS.c.key_id, _MONTHS.c.spent_usd_micros, _MONTHS.c.reserved_usd_micros, _MONTHS.c.alerted_percent
        ).where(_MONTHS.c.month == month)
        with self._engine.connect() as connection:
            return {key_id: Counters(*values) for key_id, *values in connection.execute(query)}

    def mark_alerted(self, month: date, key_id: str, percent: int) -> bool:
        """Records that `percent` has been alerted; False if some process already had (log only when True)."""
        update = (
            _row(_MONTHS.update(), month, key_id)
            .where(_MONTHS.c.alerted_percent < percent)
            .values(alerted_percent=percent)
        )
        with self._transaction() as connection:
            return bool(connection.execute(update).rowcount)

    def _take(self, connection: Connection, hold: Hold, key_id: str, limit: int | None) -> bool:
        """Adds the hold to a budget's reserved amount if it fits `limit`; _NoRow if the month has no row yet."""
        held = _MONTHS.c.spent_usd_micros + _MONTHS.c.reserved_usd_micros
        update = _row(_MONTHS.update(), hold.month, key_id).values(
            reserved_usd_micros=_MONTHS.c.reserved_usd_micros + hold.usd_micros
        )
        if limit is not None:
            update = update.where(held + hold.usd_micros <= limit)
        if connection.execute(update).rowcount:
            return True
        exists = select(_MONTHS.c.key_id).where(_MONTHS.c.month == hold.month, _MONTHS.c.key_id == key_id)
        if connection.execute(exists).first() is None:
            raise _NoRow(key_id)
        # Once more: on PostgreSQL the row may have been committed by its creator between the two statements.
        return bool(connection.execute(update).rowcount)

    def _open(self, month: date, key_id: str) -> None:
        """Creates a budget's row for `month`, starting from what the usage totals already hold.

        The totals count when a budget's row is first made mid-month (an
        upgrade from a version without these tables); after that, settlements
        keep the row current. Another process creating it at the same time wins.
        """
        next_month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
        usage = select(
            literal(month, Date),
            literal(key_id, String),
            func.coalesce(func.sum(_USAGE.c.usd_micros), 0),
            literal(0),
            literal(0),
        ).where(_USAGE.c.day >= month, _USAGE.c.day < next_month)
        if key_id != GLOBAL:
            usage = usage.where(_USAGE.c.key_id == key_id)
        columns = ["month", "key_id", "spent_usd_micros", "reserved_usd_micros", "alerted_percent"]
        with self._transaction() as connection:
            connection.execute(self._insert(_MONTHS).from_select(columns, usage).on_conflict_do_nothing())

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction, committed if the block ends normally and rolled back if it raises.

        Its commit does not wait for the disk: holds live seconds, and the next
        durable commit of anything (an audit record, the call's usage totals)
        makes them durable too, as both databases write one log in order. A
        crash loses at most the last instant's holds and settlements, never
        consistency; the global row, which every model call changes, is not
        locked through a flush.
        """
        with self._engine.connect() as connection:
            if not self._sqlite:
                connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
                yield connection
                connection.commit()
                return
            connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
            try:
                # The writer's lock first: two processes that both read a row with room cannot both take it,
                # and waiting for the lock honours busy_timeout (a read upgraded to a write would fail instead).
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    connection.rollback()
                    raise
                connection.commit()
            finally:
                # The connection goes back to the pool, where the audit log's commits must stay durable:
                # one that cannot be set back is closed instead.
                try:
                    connection.exec_driver_sql("PRAGMA synchronous=FULL")
                    connection.commit()
                except BaseException:
                    connection.invalidate()
                    raise


def _row(update: Update, month: date, key_id: str) -> Update:
    return update.where(_MONTHS.c.month == month, _MONTHS.c.key_id == key_id)
