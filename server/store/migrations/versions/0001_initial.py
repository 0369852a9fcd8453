"""The schema of release 0.1: audit events, API keys, configuration versions, usage totals, stored cases

Revision ID: 0001
Revises:
Created: 2026-11-29

The tables as `SQLModel.metadata.create_all` made them before migrations existed:
`triage-server migrate` takes such a database as being at this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(length=26), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("secret_hmac_sha256", sa.String(length=64), nullable=False),
        sa.Column("rate_limit", sa.String(length=200), nullable=False),
        sa.Column("monthly_budget_usd_micros", sa.Integer(), nullable=False),
        sa.Column("refuse_over_budget", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_table(
        "audit_events",
        sa.Column("classification_id", sa.String(length=26), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(length=128), nullable=False),
        sa.Column("esi_level", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.Integer(), nullable=False),
        sa.Column("finding_codes", sa.String(length=2000), nullable=False),
        sa.Column("ruleset_version", sa.String(length=64), nullable=False),
        sa.Column("input_hmac_sha256", sa.String(length=64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("case_ref", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("cost_usd_micros", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("classification_id"),
    )
    op.create_index("ix_audit_events_recorded_at", "audit_events", ["recorded_at"], unique=False)
    op.create_table(
        "config_versions",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.String(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("changed_paths", sa.String(length=2000), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "stored_cases",
        sa.Column("classification_id", sa.String(length=26), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=16), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("classification_id"),
    )
    op.create_table(
        "usage_totals",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=128), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("usd_micros", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "day", "step", "backend"),
    )


def downgrade() -> None:
    op.drop_table("usage_totals")
    op.drop_table("stored_cases")
    op.drop_table("config_versions")
    op.drop_index("ix_audit_events_recorded_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("api_keys")
