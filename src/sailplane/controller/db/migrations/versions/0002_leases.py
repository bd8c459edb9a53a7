"""key leases, fencing tokens, drone instances and connections

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drones", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("connection", sa.String(length=32), nullable=True))
    with op.batch_alter_table("backends", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fencing_token", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_backends_key", ["key_namespace", "key_name"], unique=False)
    with op.batch_alter_table("backend_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backend_keys", schema=None) as batch_op:
        batch_op.drop_column("expires_ms")
    with op.batch_alter_table("backends", schema=None) as batch_op:
        batch_op.drop_index("ix_backends_key")
        batch_op.drop_column("fencing_token")
    with op.batch_alter_table("drones", schema=None) as batch_op:
        batch_op.drop_column("connection")
        batch_op.drop_column("instance")
