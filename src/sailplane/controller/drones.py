"""Drones in the database: registration, heartbeats, queued actions, events, loss, drain."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select, update

from sailplane.controller.backends import BackendNotFound, record_state
from sailplane.controller.db.queries import LIVE_STATUSES, drone_load
from sailplane.controller.db.tables import backends, drone_actions, drones
from sailplane.controller.models import DroneSummary
from sailplane.protocol import BackendEvent, Hello, HostVolumeOffer
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms


def register(engine: Engine, hello: Hello) -> None:
    values = {
        "pool": hello.pool, "runtime": hello.runtime, "version": hello.version,
        "host_volumes": [v.model_dump(mode="json") for v in hello.host_volumes],
        "last_seen_ms": now_ms(), "connected": True,
    }
    with engine.begin() as conn:
        exists = conn.execute(select(drones.c.id).where(drones.c.id == hello.drone_id)).first()
        if exists:
            conn.execute(update(drones).where(drones.c.id == hello.drone_id).values(**values))
        else:
            conn.execute(drones.insert().values(id=hello.drone_id, draining=False, **values))


def heartbeat(engine: Engine, drone_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(drones).where(drones.c.id == drone_id)
                     .values(last_seen_ms=now_ms(), connected=True))


def disconnected(engine: Engine, drone_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(drones).where(drones.c.id == drone_id).values(connected=False))


def drain(engine: Engine, drone_id: str, draining: bool = True) -> None:
    """Stop (or, with ``draining=False``, resume) scheduling onto a drone; kept across its
    reconnections and the controller's restarts until changed."""
    with engine.begin() as conn:
        result = conn.execute(update(drones).where(drones.c.id == drone_id)
                              .values(draining=draining))
    if result.rowcount == 0:
        raise BackendNotFound(f"no drone {drone_id!r}")


def apply_events(engine: Engine, drone_id: str, events: list[BackendEvent]) -> None:
    """Store a batch of a drone's events in one transaction (stale or repeated ones skip)."""
    with engine.begin() as conn:
        for event in events:
            owner = conn.execute(
                select(backends.c.drone_id).where(backends.c.id == event.backend_id)
            ).scalar()
            if owner == drone_id:  # a drone reports only on its own backends
                record_state(conn, event.backend_id, event.state, event.address)
        conn.execute(update(drones).where(drones.c.id == drone_id)
                     .values(last_seen_ms=now_ms()))


def pending_actions(engine: Engine, drone_id: str, after: int = 0) -> list[dict[str, Any]]:
    """Unacknowledged actions for a drone with an id above ``after``, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(drone_actions.c.id, drone_actions.c.payload)
            .where(drone_actions.c.drone_id == drone_id, ~drone_actions.c.acked,
                   drone_actions.c.id > after)
            .order_by(drone_actions.c.id)
        ).all()
    return [{**payload, "action_id": action_id} for action_id, payload in rows]


def ack_action(engine: Engine, drone_id: str, action_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(update(drone_actions).where(
            drone_actions.c.id == action_id, drone_actions.c.drone_id == drone_id,
        ).values(acked=True))


def mark_lost(engine: Engine, silent_since_ms: int) -> list[str]:
    """Terminate (reason ``lost``) the live backends of drones silent since before the time."""
    lost: list[str] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(backends.c.id).join(drones, drones.c.id == backends.c.drone_id)
            .where(drones.c.last_seen_ms < silent_since_ms, backends.c.status.in_(LIVE_STATUSES))
        ).all()
        for (backend_id,) in rows:
            state = BackendState(status=BackendStatus.TERMINATED, time=now_ms(),
                                 reason=TerminationReason.LOST)
            if record_state(conn, backend_id, state):
                lost.append(backend_id)
    return lost


def list_drones(engine: Engine) -> list[DroneSummary]:
    load = drone_load()
    with engine.connect() as conn:
        rows = conn.execute(
            select(drones, func.coalesce(load.c.n, 0).label("load"))
            .outerjoin(load, load.c.drone_id == drones.c.id).order_by(drones.c.id)
        ).mappings().all()
    return [
        DroneSummary(
            drone_id=row["id"], pool=row["pool"], runtime=row["runtime"],
            connected=row["connected"], draining=row["draining"],
            last_seen=row["last_seen_ms"], load=row["load"],
            host_volumes=[HostVolumeOffer.model_validate(v) for v in row["host_volumes"]],
        )
        for row in rows
    ]
