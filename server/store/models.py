"""The database tables."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel


class AuditEvent(SQLModel, table=True):
    """One classification, recorded before its response is sent.

    No complaint, note or vital sign is stored: only codes, the level, and a
    keyed hash of the whole case that proves which input produced it.
    """

    __tablename__ = "audit_events"

    classification_id: str = Field(primary_key=True, max_length=26)
    recorded_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)
    method: str = Field(max_length=128)
    esi_level: int
    decided_at: int
    # Space-separated finding codes ("high_risk.possible_acs resources.count"):
    # codes never contain spaces, and plain text is portable and cheap to write.
    finding_codes: str = Field(default="", max_length=2000)
    ruleset_version: str = Field(max_length=64)
    input_hmac_sha256: str = Field(max_length=64)
    confidence: float
    case_ref: str = Field(default="", max_length=128)
    key_id: str = Field(default="", max_length=64)
    request_id: str = Field(default="", max_length=64)
    cost_usd_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_hit: bool = False
    # The hash chain (server/store/chain.py): which writer, its number for this record, and the link.
    # Empty in records written before the chain existed.
    writer_id: str | None = Field(default=None, max_length=26)
    writer_seq: int | None = None
    chain_link: str | None = Field(default=None, max_length=64)

    __table_args__ = (UniqueConstraint("writer_id", "writer_seq", name="uq_audit_events_writer_seq"),)


class AuditWriter(SQLModel, table=True):
    """A writer of the audit chain (a server process) and its last record, updated with each of its commits.

    A record removed from the end of a chain is noticed because the writer's checkpoint names it.
    """

    __tablename__ = "audit_writers"

    writer_id: str = Field(primary_key=True, max_length=26)
    last_seq: int
    last_link: str = Field(max_length=64)
    updated_at: datetime = Field(sa_type=DateTime(timezone=True))
    # Retention purged this writer's records up to this number; its link is where verifying starts.
    purged_seq: int = 0
    purged_link: str = Field(default="", max_length=64)
    # The id of the server secret its chain is linked under (server/secret.py); "" before revision 0004.
    secret_key_id: str = Field(default="", max_length=16, sa_column_kwargs={"server_default": ""})


class ApiKeyRecord(SQLModel, table=True):
    """An API key. The secret itself is never stored: only its keyed hash."""

    __tablename__ = "api_keys"

    key_id: str = Field(primary_key=True, max_length=26)
    name: str = Field(max_length=200)
    role: str = Field(max_length=16)
    # HMAC-SHA256 of the whole key under the server secret `secret_key_id`, hex ("": before revision 0004).
    secret_hmac_sha256: str = Field(max_length=64)
    secret_key_id: str = Field(default="", max_length=16, sa_column_kwargs={"server_default": ""})
    # Limits such as "10/second;1000/hour"; empty: the role's default.
    rate_limit: str = Field(default="", max_length=200)
    # 0: no budget of its own (the global budget still applies). 64-bit: micro-dollars.
    monthly_budget_usd_micros: int = Field(default=0, sa_type=BigInteger)
    # Over budget: refuse calls (True) or let model steps fall back to the rules (False).
    refuse_over_budget: bool = False
    created_at: datetime = Field(sa_type=DateTime(timezone=True))
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class ConfigVersionRecord(SQLModel, table=True):
    """One version of the runtime configuration; the rows are its history."""

    __tablename__ = "config_versions"

    # The primary key makes concurrent updates from one version conflict: one wins.
    version: int = Field(primary_key=True)
    config_json: str
    updated_at: datetime = Field(sa_type=DateTime(timezone=True))
    updated_by: str = Field(max_length=64)
    # The field-mask paths that changed, space-separated.
    changed_paths: str = Field(default="", max_length=2000)


class UsageTotal(SQLModel, table=True):
    """Model usage of one key on one day at one step through one backend."""

    __tablename__ = "usage_totals"

    key_id: str = Field(primary_key=True, max_length=64)
    day: date = Field(primary_key=True)
    step: int = Field(primary_key=True)
    backend: str = Field(primary_key=True, max_length=128)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd_micros: int = Field(default=0, sa_type=BigInteger)


class StoredCase(SQLModel, table=True):
    """A classified case, encrypted (AES-256-GCM), so that Explain can take its id later."""

    __tablename__ = "stored_cases"

    classification_id: str = Field(primary_key=True, max_length=26)
    # Who classified it: only they (or an admin) may have it explained.
    account: str = Field(default="", max_length=64)
    # Which encryption key sealed it (a fingerprint, never the key), for rotation.
    key_fingerprint: str = Field(max_length=16)
    nonce: bytes
    ciphertext: bytes


class BudgetMonth(SQLModel, table=True):
    """One budget in one calendar month (UTC): what it has spent and what calls in flight hold.

    The global budget's row has key_id "". Reservations and settlements change
    these counters with conditional UPDATEs, so every process and replica
    checks and holds against the same numbers atomically.
    """

    __tablename__ = "budget_months"

    month: date = Field(primary_key=True)  # its first day
    key_id: str = Field(primary_key=True, max_length=64)
    # 64-bit: a budget above 2,147 USD would overflow PostgreSQL's INTEGER in micro-dollars.
    spent_usd_micros: int = Field(default=0, sa_type=BigInteger)
    reserved_usd_micros: int = Field(default=0, sa_type=BigInteger)
    # The highest alert threshold (50, 80, 100 %) logged, so that each is logged once, by one process.
    alerted_percent: int = 0


class BudgetHold(SQLModel, table=True):
    """One model call's worst case, held in its month's counters until it settles or its lease ends.

    A process killed mid-call never settles; once `expires_at` has passed,
    any process releases the hold, so a dead worker's reservations do not
    shrink the budget for the rest of the month.
    """

    __tablename__ = "budget_holds"

    hold_id: str = Field(primary_key=True, max_length=26)
    month: date
    # The key whose own counters it is also held in; "" for none (only the global budget).
    key_id: str = Field(default="", max_length=64)
    usd_micros: int = Field(sa_type=BigInteger)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)
