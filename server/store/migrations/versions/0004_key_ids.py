"""Key rotation: the id of the server secret under which each API-key hash and each audit chain was made

Revision ID: 0004
Revises: 0003
Created: 2026-11-30

Rows from before this revision get "" (made under the only secret there was):
a server authenticates such a key with each secret of its ring and rewrites
it under the active one, `audit verify` finds the secret that links such a
chain, and `triage-server secret rotate` records the id while the ring still
has one secret (docs/runbooks/key-rotation.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLES = ("api_keys", "audit_writers")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("secret_key_id", sa.String(length=16), server_default="", nullable=False))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("secret_key_id")
