"""The controller's tables (SQLAlchemy Core). Only the controller talks to the database.

``backend_keys`` is the key lock: its primary key (namespace, name) lets at most one live
backend hold a key, enforced by the database itself, so it holds across controllers. Each row
is a lease: ``expires_ms`` moves forward with every heartbeat of the backend's drone, and a
row whose backend the controller lost is deleted only once its lease has run out (plus a
margin), so a silent drone's container and a new backend never overlap. ``fencing_token``
grows each time a key is taken.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

drones = Table(
    "drones", metadata,
    Column("id", String(64), primary_key=True),
    Column("pool", String(64), nullable=False, default=""),
    Column("runtime", String(32), nullable=False),
    Column("host_volumes", JSON, nullable=False),
    Column("version", String(32), nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("connected", Boolean, nullable=False),
    Column("draining", Boolean, nullable=False, default=False),
    Column("instance", String(64), nullable=True),
    Column("connection", String(32), nullable=True),  # the socket it is connected by now
)

backends = Table(
    "backends", metadata,
    Column("id", String(64), primary_key=True),
    Column("drone_id", String(64), ForeignKey("drones.id"), nullable=False, index=True),
    Column("key_namespace", String(255), nullable=False),
    Column("key_name", String(255), nullable=False),
    Column("key_tag", String(255), nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("status_time_ms", BigInteger, nullable=False),
    Column("executable", JSON, nullable=False),
    Column("secret_token", String(64), nullable=False),
    Column("static_token", String(64), nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("lifetime_deadline_ms", BigInteger, nullable=True),
    Column("max_idle_seconds", Integer, nullable=True),
    Column("last_active_ms", BigInteger, nullable=False),
    Column("address", String(64), nullable=True),
    Column("stop_requested", String(32), nullable=True),
    Column("reason", String(32), nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("message", Text, nullable=True),
    Column("fencing_token", BigInteger, nullable=True),
    Index("ix_backends_key", "key_namespace", "key_name"),
)

backend_keys = Table(
    "backend_keys", metadata,
    Column("namespace", String(255), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("backend_id", String(64), ForeignKey("backends.id"), nullable=False, unique=True),
    Column("expires_ms", BigInteger, nullable=True),
)

backend_states = Table(
    "backend_states", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("backend_id", String(64), ForeignKey("backends.id"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("reason", String(32), nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("message", Text, nullable=True),
    Index("ix_backend_states_backend_id_id", "backend_id", "id"),
)

tokens = Table(
    "tokens", metadata,
    Column("token", String(64), primary_key=True),
    Column("backend_id", String(64), ForeignKey("backends.id"), nullable=False, index=True),
    Column("username", String(255), nullable=True),
    Column("auth", JSON, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

drone_actions = Table(
    "drone_actions", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("drone_id", String(64), ForeignKey("drones.id"), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("acked", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_drone_actions_drone_id_acked", "drone_id", "acked"),
)
