"""The database tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime
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
    finding_codes: list[str] = Field(default_factory=list, sa_type=JSON)
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
