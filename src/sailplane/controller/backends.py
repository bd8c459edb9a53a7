"""Backends in the database: connect (get or create by key), terminate, status, history.

Plain functions over an :class:`~sqlalchemy.Engine`, called from the API in a worker thread.
The key lock is the ``backend_keys`` primary key: when two connects race for a new key, one
insert wins and the other re-reads and joins the winner's backend.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from sailplane.controller.db.queries import LIVE_STATUSES, drone_load
from sailplane.controller.db.tables import (
    backend_keys,
    backend_states,
    backends,
    drone_actions,
    drones,
    tokens,
)
from sailplane.controller.leases import DEFAULT_TERMS, LeaseTerms, release
from sailplane.controller.models import BackendSummary, ConnectResponse, StatusResponse
from sailplane.controller.scheduler import DroneCandidate, choose_drone
from sailplane.errors import SailplaneError
from sailplane.mounts.plan import host_volume_needs
from sailplane.mounts.validate import TemplateValues
from sailplane.names import is_backend_id, new_backend_id, new_secret
from sailplane.protocol import HostVolumeOffer, SpawnBackend, TerminateBackend
from sailplane.spec import ConnectRequest, KeyConfig
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms
from sailplane.timing import CONNECT_KEY_WAIT_SECONDS, HEARTBEAT_DEADLINE_SECONDS

STATIC_TOKEN_PREFIX = "s."
_KEY_POLL_SECONDS = 0.1


class KeyTagMismatch(SailplaneError):
    """Raised when a key's live backend was created with another tag (HTTP 409)."""

    code = "tag_mismatch"


class BackendExists(SailplaneError):
    """Raised when ``spawn_config.id`` names a backend that exists already (HTTP 409)."""

    code = "backend_exists"


class KeyBusy(SailplaneError):
    """Raised when a key stays held by a backend on its way out for longer than a connect
    waits (HTTP 503: it passes once that backend is gone)."""

    code = "key_busy"


class BackendNotFound(SailplaneError):
    """Raised for an unknown backend, or a key-only connect with no live backend (404)."""

    code = "not_found"


@dataclass(frozen=True)
class Urls:
    """Where clients reach things: the proxy (backend URLs) and the controller (status)."""

    proxy: str
    controller: str


@dataclass(frozen=True)
class QueuedAction:
    """An action committed to a drone's queue, as its socket sends it."""

    drone_id: str
    message: dict[str, Any]  # the action with its ``action_id``


def connect(
    engine: Engine, request: ConnectRequest, urls: Urls, terms: LeaseTerms = DEFAULT_TERMS,
    key_wait_seconds: float = CONNECT_KEY_WAIT_SECONDS,
) -> tuple[ConnectResponse, QueuedAction | None]:
    """Return the key's live backend or spawn one; also the spawn queued for its drone (None
    if the key was live).

    A key still held by a backend on its way out (terminating, or lost with its lease not yet
    run out) is never handed out: the connect waits for the key, up to ``key_wait_seconds``,
    and then spawns anew (or answers :class:`KeyBusy`, 503)."""
    key = request.key or KeyConfig(name="lk-" + secrets.token_hex(8))
    deadline = time.monotonic() + key_wait_seconds
    while True:
        found: ConnectResponse | str | None = None
        try:
            # One transaction reads the key and, if it is free, spawns: on SQLite it holds
            # the write lock from its start, so the key cannot be taken in between.
            with engine.begin() as conn:
                found = _join_live(conn, key, request, urls, terms)
                if found is None and request.spawn_config is not None:
                    return _spawn(conn, key, request, urls, terms)
        except IntegrityError:  # another connect took the key first: join its backend
            assert request.spawn_config is not None
            with engine.connect() as conn:
                _check_new_id(conn, request.spawn_config.id)
            if time.monotonic() < deadline:
                continue
        if isinstance(found, ConnectResponse):
            return found, None
        if request.spawn_config is None:
            held = " (its backend is terminating)" if found is _HELD else ""
            raise BackendNotFound(f"no live backend for key {key.name!r} in namespace "
                                  f"{key.namespace!r}{held}, and no spawn_config to start one")
        if time.monotonic() >= deadline:
            raise KeyBusy(f"key {key.name!r} in namespace {key.namespace!r} is still held by a "
                          f"backend on its way out after {key_wait_seconds:.0f} s; try again")
        time.sleep(_KEY_POLL_SECONDS)


_HELD = "held"

# The statements of a new-key connect and of a drone's event (record_state), built once:
# building one (and its cache key) on every call cost more than running it.
_KEY_HOLDER = (
    select(backends, backend_keys.c.expires_ms)
    .join(backend_keys, backend_keys.c.backend_id == backends.c.id)
    .where(backend_keys.c.namespace == bindparam("namespace"),
           backend_keys.c.name == bindparam("name"))
)
_BACKEND_EXISTS = select(backends.c.id).where(backends.c.id == bindparam("backend_id"))
_LOAD = drone_load()
_CANDIDATES = (
    select(drones, func.coalesce(_LOAD.c.n, 0).label("load"))
    .outerjoin(_LOAD, _LOAD.c.drone_id == drones.c.id).where(drones.c.connected)
)
_NEXT_FENCE = select(func.coalesce(func.max(backends.c.fencing_token), 0) + 1).where(
    backends.c.key_namespace == bindparam("namespace"),
    backends.c.key_name == bindparam("name"))
_NEW_BACKEND = insert(backends)
_NEW_KEY = insert(backend_keys)
_NEW_STATE = insert(backend_states)
_NEW_TOKEN = insert(tokens)
_NEW_ACTION = insert(drone_actions)
_LOCKED_STATUS = (select(backends.c.status).where(backends.c.id == bindparam("backend_id"))
                  .with_for_update())
# Sets the columns given with the parameters (one compiled form per set of columns).
_UPDATE_BACKEND = update(backends).where(backends.c.id == bindparam("the_id"))


def _join_live(
    conn: Connection, key: KeyConfig, request: ConnectRequest, urls: Urls, terms: LeaseTerms,
) -> ConnectResponse | str | None:
    """The response joining the key's live backend; None if the key is free, :data:`_HELD`
    if a backend on its way out still holds it."""
    row = conn.execute(_KEY_HOLDER, {"namespace": key.namespace, "name": key.name}
                       ).mappings().first()
    if row is None:
        return None
    status = BackendStatus(row["status"])
    if status is BackendStatus.TERMINATED:  # lost: the key is free once its lease ran out
        if not terms.releasable(row["expires_ms"], now_ms()):
            return _HELD
        release(conn, row["id"])
        return None
    if not status.is_alive or row["stop_requested"]:
        return _HELD
    if not joinable(row["status"], row["stop_requested"], row["key_tag"], key):
        raise KeyTagMismatch(f"key {key.name!r} has a live backend with tag {row['key_tag']!r}, "
                             f"not {key.tag!r}")
    token = row["static_token"] or _new_token(conn, row["id"], request)
    return connect_response(row["id"], False, status, token, row["drone_id"],
                            row["secret_token"], urls)


def joinable(status: str, stop_requested: str | None, key_tag: str, key: KeyConfig) -> bool:
    """Whether a connect for ``key`` joins the backend holding it (given that backend's row):
    it is alive, no one asked it to stop, and it was made with the key's tag."""
    return (BackendStatus(status).is_alive and not stop_requested and key_tag == key.tag)


def _check_new_id(conn: Connection, given: str | None) -> None:
    """Refuse (409) a ``spawn_config.id`` that names a backend which exists already."""
    if given and is_backend_id(given) and conn.execute(
            _BACKEND_EXISTS, {"backend_id": given}).first() is not None:
        raise BackendExists(f"a backend with id {given!r} exists already; spawn_config.id must "
                            "be new")


def _spawn(
    conn: Connection, key: KeyConfig, request: ConnectRequest, urls: Urls, terms: LeaseTerms,
) -> tuple[ConnectResponse, QueuedAction]:
    """Spawn a backend for the free ``key``, in the caller's transaction."""
    spawn_config = request.spawn_config
    assert spawn_config is not None
    given = spawn_config.id
    _check_new_id(conn, given)
    backend_id = given if given and is_backend_id(given) else new_backend_id()
    needs = host_volume_needs(  # MountRefused here is the caller's 400
        spawn_config.executable, TemplateValues(key.name, key.namespace, backend_id)
    )
    pool = spawn_config.pool or request.pool or ""
    drone = choose_drone(_candidates(conn), pool, needs, key.namespace)
    now = now_ms()
    secret = new_secret()
    static = STATIC_TOKEN_PREFIX + new_secret() if spawn_config.use_static_token else None
    lifetime = spawn_config.lifetime_limit_seconds
    fence = conn.execute(_NEXT_FENCE, {"namespace": key.namespace, "name": key.name}
                         ).scalar_one()
    conn.execute(_NEW_BACKEND, {
        "id": backend_id, "drone_id": drone.drone_id, "key_namespace": key.namespace,
        "key_name": key.name, "key_tag": key.tag, "status": BackendStatus.SCHEDULED.value,
        "status_time_ms": now, "executable": spawn_config.executable.model_dump(mode="json"),
        "secret_token": secret, "static_token": static, "created_ms": now,
        "lifetime_deadline_ms": now + lifetime * 1000 if lifetime else None,
        "max_idle_seconds": spawn_config.max_idle_seconds, "last_active_ms": now,
        "fencing_token": fence,
    })
    conn.execute(_NEW_KEY, {"namespace": key.namespace, "name": key.name,
                            "backend_id": backend_id, "expires_ms": now + terms.lease_ms})
    conn.execute(_NEW_STATE, {"backend_id": backend_id,
                              "status": BackendStatus.SCHEDULED.value, "time_ms": now})
    token = static or _new_token(conn, backend_id, request)
    spawn = SpawnBackend(backend_id=backend_id, key=key, executable=spawn_config.executable,
                         secret_token=secret, fencing_token=int(fence))
    payload = spawn.model_dump(mode="json")
    action_id = queue_action(conn, drone.drone_id, payload)
    response = connect_response(backend_id, True, BackendStatus.SCHEDULED, token,
                                drone.drone_id, secret, urls)
    return response, QueuedAction(drone.drone_id, {**payload, "action_id": action_id})


def _candidates(conn: Connection) -> list[DroneCandidate]:
    fresh_after = now_ms() - int(HEARTBEAT_DEADLINE_SECONDS * 1000)
    return [
        DroneCandidate(
            drone_id=row["id"], pool=row["pool"], fresh=row["last_seen_ms"] >= fresh_after,
            draining=row["draining"], load=row["load"],
            host_volumes=tuple(HostVolumeOffer.model_validate(v) for v in row["host_volumes"]),
        )
        for row in conn.execute(_CANDIDATES).mappings()
    ]


def _new_token(conn: Connection, backend_id: str, request: ConnectRequest) -> str:
    values = new_token_row(backend_id, request)
    conn.execute(_NEW_TOKEN, values)
    return str(values["token"])


def new_token_row(backend_id: str, request: ConnectRequest) -> dict[str, Any]:
    """A fresh user token for ``backend_id``, as its ``tokens`` row (not stored yet)."""
    return {"token": "t-" + new_secret(), "backend_id": backend_id, "username": request.user,
            "auth": request.auth, "created_ms": now_ms()}


def connect_response(
    backend_id: str, spawned: bool, status: BackendStatus, token: str, drone: str,
    secret: str, urls: Urls,
) -> ConnectResponse:
    return ConnectResponse(
        backend_id=backend_id, spawned=spawned, status=status, token=token,
        url=f"{urls.proxy.rstrip('/')}/{token}/",
        status_url=f"{urls.controller.rstrip('/')}/pub/b/{backend_id}/status",
        drone=drone, secret_token=secret,
    )


def queue_action(conn: Connection, drone_id: str, payload: dict[str, Any]) -> int:
    """Queue a message for a drone; its socket handler sends it until acknowledged."""
    result = conn.execute(_NEW_ACTION, {"drone_id": drone_id, "payload": payload,
                                        "acked": False, "created_ms": now_ms()})
    (action_id,) = result.inserted_primary_key or (0,)
    return int(action_id)


def request_termination(
    engine: Engine, backend_id: str, hard: bool, reason: TerminationReason
) -> str:
    """Ask the backend's drone to stop it; returns the drone id ("" if nothing to do)."""
    with engine.begin() as conn:
        row = conn.execute(
            select(backends.c.drone_id, backends.c.status, backends.c.stop_requested)
            .where(backends.c.id == backend_id)
        ).first()
        if row is None:
            raise BackendNotFound(f"no backend {backend_id!r}")
        drone_id, status, requested = row
        if status == BackendStatus.TERMINATED.value or (requested == "hard" or
                                                          (requested and not hard)):
            return ""
        conn.execute(update(backends).where(backends.c.id == backend_id)
                     .values(stop_requested="hard" if hard else "soft"))
        message = TerminateBackend(backend_id=backend_id, hard=hard, reason=reason)
        queue_action(conn, drone_id, message.model_dump(mode="json"))
    return str(drone_id)


def record_state(
    conn: Connection, backend_id: str, state: BackendState, address: str | None = None,
    *, release_key: bool = True,
) -> bool:
    """Store one state of a backend's history; False for a stale or repeated one.

    At ``terminated`` the key is released, so the next connect spawns anew, unless
    ``release_key`` is False (the controller lost the backend: its lease still holds the key,
    ``sailplane.controller.leases``)."""
    # Locked (PostgreSQL; SQLite takes its write lock at BEGIN): a concurrent writer of this
    # backend (the sweeper's "lost" against the drone's late events) reads the committed
    # status after us, never the one we are replacing, so no state moves it backwards.
    row = conn.execute(_LOCKED_STATUS, {"backend_id": backend_id}).first()
    if row is None or BackendStatus(row[0]).rank >= state.status.rank:
        return False
    conn.execute(_NEW_STATE, {
        "backend_id": backend_id, "status": state.status.value, "time_ms": state.time,
        "reason": state.reason, "exit_code": state.exit_code, "message": state.message,
    })
    values: dict[str, Any] = {"status": state.status.value, "status_time_ms": state.time}
    if state.status is BackendStatus.READY:
        values["last_active_ms"] = state.time  # idle time counts from ready
    if address:
        values["address"] = address
    if state.status is BackendStatus.TERMINATED:
        values |= {"reason": state.reason, "exit_code": state.exit_code,
                   "message": state.message}
        if release_key:
            release(conn, backend_id)
    conn.execute(_UPDATE_BACKEND, {"the_id": backend_id, **values})
    return True


def status(engine: Engine, backend_id: str) -> StatusResponse:
    with engine.connect() as conn:
        row = conn.execute(
            select(backends.c.status, backends.c.status_time_ms, backends.c.reason,
                   backends.c.exit_code).where(backends.c.id == backend_id)
        ).first()
    if row is None:
        raise BackendNotFound(f"no backend {backend_id!r}")
    return _status(*row)


def history(engine: Engine, backend_id: str, after: int = 0) -> list[tuple[int, StatusResponse]]:
    """The backend's states with an id greater than ``after`` (SSE's Last-Event-ID)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(backend_states.c.id, backend_states.c.status, backend_states.c.time_ms,
                   backend_states.c.reason, backend_states.c.exit_code)
            .where(and_(backend_states.c.backend_id == backend_id, backend_states.c.id > after))
            .order_by(backend_states.c.id)
        ).all()
    return [(row[0], _status(*row[1:])) for row in rows]


def exists(engine: Engine, backend_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(
            select(backends.c.id).where(backends.c.id == backend_id)
        ).first() is not None


def _status(status: str, time: int, reason: str | None, exit_code: int | None) -> StatusResponse:
    return StatusResponse(
        status=BackendStatus(status), time=time,
        reason=TerminationReason(reason) if reason else None, exit_code=exit_code,
    )


def list_backends(engine: Engine, live_only: bool = False) -> list[BackendSummary]:
    query = select(backends).order_by(backends.c.created_ms)
    if live_only:
        query = query.where(backends.c.status.in_(LIVE_STATUSES))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_summary(row) for row in rows]


def summary(engine: Engine, backend_id: str) -> BackendSummary:
    """One backend as :func:`list_backends` shows it (for ``/ctrl`` callers: has the message)."""
    with engine.connect() as conn:
        row = conn.execute(select(backends).where(backends.c.id == backend_id)).mappings().first()
    if row is None:
        raise BackendNotFound(f"no backend {backend_id!r}")
    return _summary(row)


def _summary(row: Any) -> BackendSummary:
    return BackendSummary(
        backend_id=row["id"], drone=row["drone_id"],
        key={"name": row["key_name"], "namespace": row["key_namespace"], "tag": row["key_tag"]},
        status=BackendStatus(row["status"]), status_time=row["status_time_ms"],
        address=row["address"], reason=row["reason"], exit_code=row["exit_code"],
        message=row["message"],
    )
