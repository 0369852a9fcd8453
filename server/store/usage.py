"""Model usage totals per key, day, step and backend, and what each month has cost.

Synchronous: called from worker threads. Totals are added with an upsert
(INSERT ... ON CONFLICT DO UPDATE), one transaction for a batch of calls
(server/group_commit.py gathers them). The statement is built once and run
for all of a batch's rows: a statement of as many rows as the batch had to be
compiled anew for every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from sqlalchemy import Engine, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from server.calls import LedgerEntry
from server.store.models import UsageTotal

_TABLE = UsageTotal.__table__  # type: ignore[attr-defined]
_SUMMED = ("requests", "input_tokens", "output_tokens", "usd_micros")
# One call's usage: its key, its day (UTC) and what its model steps used.
CallUsage = tuple[str, date, Sequence[LedgerEntry]]


class UsageStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(_TABLE)
        self._upsert = insert.on_conflict_do_update(
            index_elements=["key_id", "day", "step", "backend"],
            set_={name: _TABLE.c[name] + insert.excluded[name] for name in _SUMMED},
        )

    def add(self, calls: Sequence[CallUsage]) -> None:
        """Adds the calls' ledgers to the totals, in one transaction."""
        totals: dict[tuple[str, date, int, str], dict[str, int]] = {}
        for key_id, day, entries in calls:
            for step, backend in {(entry.step, entry.backend) for entry in entries}:
                # One request a call, however many attempts.
                totals.setdefault((key_id, day, step, backend), dict.fromkeys(_SUMMED, 0))["requests"] += 1
            for entry in entries:
                row = totals[(key_id, day, entry.step, entry.backend)]
                row["input_tokens"] += entry.input_tokens
                row["output_tokens"] += entry.output_tokens
                row["usd_micros"] += entry.usd_micros
        if not totals:
            return
        rows = [
            {"key_id": key_id, "day": day, "step": step, "backend": backend, **values}
            for (key_id, day, step, backend), values in totals.items()
        ]
        # The rows are distinct totals (summed above): no two in one batch update the same row.
        with self._engine.begin() as connection:
            connection.execute(self._upsert, rows)

    def spent_since(self, first_day: date) -> dict[str, int]:
        """Micro-dollars spent per key from `first_day` on."""
        query = (
            select(UsageTotal.key_id, func.sum(UsageTotal.usd_micros))
            .where(col(UsageTotal.day) >= first_day)
            .group_by(col(UsageTotal.key_id))
        )
        with Session(self._engine) as session:
            return {key_id: int(spent or 0) for key_id, spent in session.exec(query)}

    def totals(self, first_day: date, last_day: date, key_id: str | None) -> list[UsageTotal]:
        """The totals of the days from `first_day` to `last_day` inclusive, oldest first."""
        query = select(UsageTotal).where(col(UsageTotal.day) >= first_day, col(UsageTotal.day) <= last_day)
        if key_id:
            query = query.where(col(UsageTotal.key_id) == key_id)
        query = query.order_by(col(UsageTotal.day), col(UsageTotal.key_id), col(UsageTotal.step))
        with Session(self._engine) as session:
            return list(session.exec(query))
