"""The audit log's hash chain, and audit records made append-only on PostgreSQL

Revision ID: 0002
Revises: 0001
Created: 2026-11-29

Records written before this revision have no chain (`audit verify` counts them
as unchained). On PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE of
audit records, and DELETE of chain checkpoints, whatever the role; retention's
purge deletes old records with `SET LOCAL triage.audit_purge = 'on'`. The
trigger stops mistakes and the application's own role; against a database
owner, the chain is the evidence. docs/data.md gives the grants for a runtime
role that can only insert and read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_APPEND_ONLY = """
CREATE FUNCTION triage_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_events'
            AND current_setting('triage.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_writers",
        sa.Column("writer_id", sa.String(length=26), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("last_link", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("purged_seq", sa.Integer(), nullable=False),
        sa.Column("purged_link", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("writer_id"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("writer_id", sa.String(length=26), nullable=True))
        batch_op.add_column(sa.Column("writer_seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("chain_link", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_audit_events_writer_seq", ["writer_id", "writer_seq"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_APPEND_ONLY)
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION triage_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION triage_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_writers_kept BEFORE DELETE ON audit_writers "
            "FOR EACH ROW EXECUTE FUNCTION triage_audit_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_writers_kept ON audit_writers")
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION triage_audit_append_only()")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_constraint("uq_audit_events_writer_seq", type_="unique")
        batch_op.drop_column("chain_link")
        batch_op.drop_column("writer_seq")
        batch_op.drop_column("writer_id")
    op.drop_table("audit_writers")
