"""initial schema

Revision ID: 0001
Revises:
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
        "drones",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("runtime", sa.String(length=32), nullable=False),
        sa.Column("host_volumes", sa.JSON(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "backends",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("drone_id", sa.String(length=64), nullable=False),
        sa.Column("key_namespace", sa.String(length=255), nullable=False),
        sa.Column("key_name", sa.String(length=255), nullable=False),
        sa.Column("key_tag", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("executable", sa.JSON(), nullable=False),
        sa.Column("secret_token", sa.String(length=64), nullable=False),
        sa.Column("static_token", sa.String(length=64), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("lifetime_deadline_ms", sa.BigInteger(), nullable=True),
        sa.Column("max_idle_seconds", sa.Integer(), nullable=True),
        sa.Column("last_active_ms", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("stop_requested", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["drone_id"],
            ["drones.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("backends", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_backends_drone_id"), ["drone_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_backends_status"), ["status"], unique=False)

    op.create_table(
        "drone_actions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("drone_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("acked", sa.Boolean(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["drone_id"],
            ["drones.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("drone_actions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_drone_actions_drone_id_acked", ["drone_id", "acked"], unique=False
        )

    op.create_table(
        "backend_keys",
        sa.Column("namespace", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("backend_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["backend_id"],
            ["backends.id"],
        ),
        sa.PrimaryKeyConstraint("namespace", "name"),
        sa.UniqueConstraint("backend_id"),
    )
    op.create_table(
        "backend_states",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("backend_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["backend_id"],
            ["backends.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("backend_states", schema=None) as batch_op:
        batch_op.create_index("ix_backend_states_backend_id_id", ["backend_id", "id"], unique=False)

    op.create_table(
        "tokens",
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("backend_id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("auth", sa.JSON(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["backend_id"],
            ["backends.id"],
        ),
        sa.PrimaryKeyConstraint("token"),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokens_backend_id"), ["backend_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tokens_backend_id"))

    op.drop_table("tokens")
    with op.batch_alter_table("backend_states", schema=None) as batch_op:
        batch_op.drop_index("ix_backend_states_backend_id_id")

    op.drop_table("backend_states")
    op.drop_table("backend_keys")
    with op.batch_alter_table("drone_actions", schema=None) as batch_op:
        batch_op.drop_index("ix_drone_actions_drone_id_acked")

    op.drop_table("drone_actions")
    with op.batch_alter_table("backends", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backends_status"))
        batch_op.drop_index(batch_op.f("ix_backends_drone_id"))

    op.drop_table("backends")
    op.drop_table("drones")
