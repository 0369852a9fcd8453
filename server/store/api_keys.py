"""API keys in the database: create, list, revoke, read.

Synchronous on purpose: the `triage-server keys` command calls it directly,
and the server calls it from worker threads, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from server.store.models import ApiKeyRecord


@dataclass(frozen=True, slots=True)
class ApiKeyPage:
    keys: list[ApiKeyRecord]
    has_more: bool


class ApiKeyStore:
    """The api_keys table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: ApiKeyRecord) -> ApiKeyRecord:
        with Session(self._engine, expire_on_commit=False) as session:
            session.add(record)
            session.commit()
        return _utc(record)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        with Session(self._engine) as session:
            record = session.get(ApiKeyRecord, key_id)
        return None if record is None else _utc(record)

    def all(self) -> list[ApiKeyRecord]:
        with Session(self._engine) as session:
            return [_utc(r) for r in session.exec(select(ApiKeyRecord))]

    def page(self, *, after_id: str | None, limit: int) -> ApiKeyPage:
        """Keys in id (creation) order after `after_id`."""
        query = select(ApiKeyRecord).order_by(col(ApiKeyRecord.key_id)).limit(limit + 1)
        if after_id is not None:
            query = query.where(col(ApiKeyRecord.key_id) > after_id)
        with Session(self._engine) as session:
            records: Sequence[ApiKeyRecord] = session.exec(query).all()
        return ApiKeyPage([_utc(r) for r in records[:limit]], has_more=len(records) > limit)

    def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord | None:
        """Marks the key revoked (once: a second revocation keeps the first time)."""
        with Session(self._engine, expire_on_commit=False) as session:
            record = session.get(ApiKeyRecord, key_id)
            if record is None:
                return None
            if record.revoked_at is None:
                record.revoked_at = now
                session.add(record)
                session.commit()
        return _utc(record)

    def rehash(self, key_id: str, *, from_secret_id: str, digest: str, to_secret_id: str) -> bool:
        """Replaces the key's hash made under `from_secret_id` with one under `to_secret_id`; False if it was not."""
        with Session(self._engine) as session:
            # Conditional: another process rewriting the same key at once changes it once.
            result = session.exec(
                update(ApiKeyRecord)
                .where(col(ApiKeyRecord.key_id) == key_id, col(ApiKeyRecord.secret_key_id) == from_secret_id)
                .values(secret_hmac_sha256=digest, secret_key_id=to_secret_id)
            )
            session.commit()
        return bool(result.rowcount == 1)


def _utc(record: ApiKeyRecord) -> ApiKeyRecord:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    for name in ("created_at", "expires_at", "revoked_at"):
        value = getattr(record, name)
        if value is not None and value.tzinfo is None:
            setattr(record, name, value.replace(tzinfo=UTC))
    return record
