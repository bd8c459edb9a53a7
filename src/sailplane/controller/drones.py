"""Drones in the database: registration, heartbeats, queued actions, events, loss, drain."""

from __future__ import annotations

import secrets
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, update

from sailplane.controller.backends import BackendNotFound, record_state
from sailplane.controller.db.queries import LIVE_STATUSES, drone_load
from sailplane.controller.db.tables import backends, drone_actions, drones
from sailplane.controller.leases import DEFAULT_TERMS, LeaseTerms, release, renew
from sailplane.controller.models import DroneSummary
from sailplane.errors import SailplaneError
from sailplane.protocol import BackendEvent, Hello, HostVolumeOffer
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms
from sailplane.timing import DRONE_ID_LIVE_SECONDS


class DroneIdInUse(SailplaneError):
    """Raised when a drone registers with the id of another drone that is still live."""

    code = "drone_id_in_use"


def register(engine: Engine, hello: Hello, live_seconds: float = DRONE_ID_LIVE_SECONDS) -> str:
    """Record the drone as connected; returns this connection's id (for :func:`disconnected`).
    A drone of another ``instance`` (another state directory) heard from within
    ``live_seconds`` under the same id is refused with :class:`DroneIdInUse`: the two would
    remove each other's containers."""
    now = now_ms()
    connection = secrets.token_hex(8)
    values = {"connection": connection,
        "pool": hello.pool, "runtime": hello.runtime, "version": hello.version,
        "host_volumes": [v.model_dump(mode="json") for v in hello.host_volumes],
        "last_seen_ms": now, "connected": True, "instance": hello.instance or None,
    }
    with engine.begin() as conn:
        row = conn.execute(
            select(drones.c.connected, drones.c.last_seen_ms, drones.c.instance)
            .where(drones.c.id == hello.drone_id).with_for_update()
        ).first()
        if row is None:
            conn.execute(drones.insert().values(id=hello.drone_id, draining=False, **values))
            return connection
        connected, last_seen, instance = row
        if (connected and instance and hello.instance and instance != hello.instance
                and now - last_seen < live_seconds * 1000):
            raise DroneIdInUse(
                f"drone id {hello.drone_id!r} is in use by another live drone (instance "
                f"{instance}); give this drone another --drone-id")
        conn.execute(update(drones).where(drones.c.id == hello.drone_id).values(**values))
    return connection


def heartbeat(
    engine: Engine, drone_id: str, live: list[str] | None = None,
    terms: LeaseTerms = DEFAULT_TERMS,
) -> list[str]:
    """Note the drone alive and renew its backends' leases; the listed backends to revoke."""
    now = now_ms()
    with engine.begin() as conn:
        conn.execute(update(drones).where(drones.c.id == drone_id)
                     .values(last_seen_ms=now, connected=True))
        return renew(conn, drone_id, live, now, terms)


def disconnected(engine: Engine, drone_id: str, connection: str) -> None:
    """The drone's socket ``connection`` closed; nothing changes if the drone has connected
    again meanwhile (the old socket's end is often noticed after the new one's start)."""
    with engine.begin() as conn:
        conn.execute(update(drones).where(drones.c.id == drone_id,
                                          drones.c.connection == connection)
                     .values(connected=False))


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
            owner = conn.execute(_OWNER, {"backend_id": event.backend_id}).scalar()
            if owner != drone_id:  # a drone reports only on its own backends
                continue
            if (not record_state(conn, event.backend_id, event.state, event.address)
                    and event.state.status is BackendStatus.TERMINATED):
                # Already lost here, and now its drone confirms the container is gone: the
                # key need not wait for the lease to run out.
                release(conn, event.backend_id)
        conn.execute(_SEEN, {"drone_id": drone_id, "last_seen_ms": now_ms()})


# Built once: apply_events runs for every state of every backend.
_OWNER = select(backends.c.drone_id).where(backends.c.id == bindparam("backend_id"))
_SEEN = update(drones).where(drones.c.id == bindparam("drone_id"))


def pending_actions(
    engine: Engine, drone_id: str, skip: Collection[int] = (),
) -> list[dict[str, Any]]:
    """Every unacknowledged action for a drone but those in ``skip``, oldest first.

    Not "those above the last id sent": PostgreSQL hands out sequence values at insert and
    their transactions commit in any order, so a lower id can appear after a higher one was
    read. The caller skips what it already sent on this connection instead; unacknowledged
    actions are few (a drone acknowledges each as it takes it)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(drone_actions.c.id, drone_actions.c.payload)
            .where(drone_actions.c.drone_id == drone_id, ~drone_actions.c.acked)
            .order_by(drone_actions.c.id)
        ).all()
    return [{**payload, "action_id": action_id} for action_id, payload in rows
            if action_id not in skip]


def ack_action(engine: Engine, drone_id: str, action_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(update(drone_actions).where(
            drone_actions.c.id == action_id, drone_actions.c.drone_id == drone_id,
        ).values(acked=True))


def refuse_action(engine: Engine, drone_id: str, action_id: int, message: str) -> str | None:
    """The drone cannot take this action (or it cannot be sent): acknowledge it, and end a
    spawn's backend ``terminated (error)`` with ``message``. Returns that backend's id."""
    with engine.begin() as conn:
        payload = conn.execute(
            select(drone_actions.c.payload).where(drone_actions.c.id == action_id,
                                                  drone_actions.c.drone_id == drone_id)
        ).scalar()
        conn.execute(update(drone_actions).where(drone_actions.c.id == action_id,
                                                 drone_actions.c.drone_id == drone_id)
                     .values(acked=True))
        if not isinstance(payload, dict) or payload.get("type") != "spawn":
            return None
        backend_id = str(payload.get("backend_id"))
        state = BackendState(status=BackendStatus.TERMINATED, time=now_ms(),
                             reason=TerminationReason.ERROR, message=message)
        record_state(conn, backend_id, state)
        return backend_id


def mark_lost(engine: Engine, silent_since_ms: int) -> list[str]:
    """Terminate (reason ``lost``) the live backends of drones silent since before the time."""
    lost: list[str] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(backends.c.id, backends.c.drone_id)
            .join(drones, drones.c.id == backends.c.drone_id)
            .where(drones.c.last_seen_ms < silent_since_ms, backends.c.status.in_(LIVE_STATUSES))
        ).all()
        for backend_id, _drone_id in rows:
            state = BackendState(status=BackendStatus.TERMINATED, time=now_ms(),
                                 reason=TerminationReason.LOST)
            # The key stays held until the backend's lease runs out (leases.release_expired).
            if record_state(conn, backend_id, state, release_key=False):
                lost.append(backend_id)
        _withdraw_spawns(conn, {drone_id for _, drone_id in rows}, set(lost))
    return lost


def _withdraw_spawns(conn: Connection, drone_ids: set[str], backend_ids: set[str]) -> None:
    """Acknowledge, unsent, the spawns of ``backend_ids`` their silent drones never took.

    Sent when the drone returns, such a spawn would start a backend the controller counts
    terminated, on a key that may belong to a new backend by then: two live containers for
    one key until the drone's first heartbeat revokes it."""
    if not backend_ids:
        return
    rows = conn.execute(
        select(drone_actions.c.id, drone_actions.c.payload)
        .where(drone_actions.c.drone_id.in_(drone_ids), ~drone_actions.c.acked)
    ).all()
    withdrawn = [action_id for action_id, payload in rows
                 if payload.get("type") == "spawn" and payload.get("backend_id") in backend_ids]
    if withdrawn:
        conn.execute(update(drone_actions).where(drone_actions.c.id.in_(withdrawn))
                     .values(acked=True))


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
