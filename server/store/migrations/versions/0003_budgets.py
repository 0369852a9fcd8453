"""Budgets held in the database, exact across processes and replicas; micro-dollar columns made 64-bit

Revision ID: 0003
Revises: 0002
Created: 2026-11-29

`budget_months` keeps each budget's spent and reserved micro-dollars per UTC
month, `budget_holds` each model call's reservation until it settles or its
lease ends (server/store/budgets.py). A key's own budget and the usage totals
become BIGINT: above 2,147 USD, micro-dollars overflow PostgreSQL's INTEGER.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_holds",
        sa.Column("hold_id", sa.String(length=26), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("usd_micros", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hold_id"),
    )
    with op.batch_alter_table("budget_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budget_holds_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "budget_months",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("spent_usd_micros", sa.BigInteger(), nullable=False),
        sa.Column("reserved_usd_micros", sa.BigInteger(), nullable=False),
        sa.Column("alerted_percent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("month", "key_id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column(
            "monthly_budget_usd_micros", existing_type=sa.INTEGER(), type_=sa.BigInteger(), existing_nullable=False
        )

    with op.batch_alter_table("usage_totals", schema=None) as batch_op:
        batch_op.alter_column("usd_micros", existing_type=sa.INTEGER(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_totals", schema=None) as batch_op:
        batch_op.alter_column("usd_micros", existing_type=sa.BigInteger(), type_=sa.INTEGER(), existing_nullable=False)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column(
            "monthly_budget_usd_micros", existing_type=sa.BigInteger(), type_=sa.INTEGER(), existing_nullable=False
        )

    op.drop_table("budget_months")
    with op.batch_alter_table("budget_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budget_holds_expires_at"))

    op.drop_table("budget_holds")
