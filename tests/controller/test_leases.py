"""Key leases on the controller: heartbeats renew and revoke, a lost backend's key waits for
its lease, fencing tokens grow per key, and a drone id is one drone's at a time."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from sailplane.controller import backends, drones
from sailplane.controller.db.tables import backend_keys
from sailplane.controller.leases import DEFAULT_TERMS
from sailplane.controller.sweeper import sweep_once
from sailplane.protocol import BackendEvent, Hello
from sailplane.spec import ConnectRequest
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms
from tests.controller.conftest import CONTROLLER_URL, PROXY_URL, add_drone, spawn_body

URLS = backends.Urls(proxy=PROXY_URL, controller=CONTROLLER_URL)
LATER = DEFAULT_TERMS.lease_ms + DEFAULT_TERMS.margin_ms + 1_000


def spawn(engine: Engine, name: str = "doc") -> str:
    response, _ = backends.connect(engine, ConnectRequest.model_validate(spawn_body(name)), URLS,
                                   key_wait_seconds=0)
    return response.backend_id


def expiry(engine: Engine, backend_id: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(select(backend_keys.c.expires_ms)
                            .where(backend_keys.c.backend_id == backend_id)).scalar()


def test_heartbeat_renews_live_leases_and_revokes_the_rest(engine: Engine) -> None:
    add_drone(engine)
    live = spawn(engine, "a")
    lost = spawn(engine, "b")
    before = expiry(engine, live)
    assert before is not None
    drones.mark_lost(engine, now_ms() + 1)  # both lost ...
    add_drone(engine)
    fresh = spawn(engine, "c")  # ... a new one on another key is live
    revoked = drones.heartbeat(engine, "d1", [lost, fresh, "never-known"])
    assert revoked == sorted([lost, "never-known"])
    assert (expiry(engine, fresh) or 0) >= now_ms() + DEFAULT_TERMS.lease_ms - 2_000
    assert drones.heartbeat(engine, "d1", None) == []  # an older drone lists nothing


def test_a_lost_key_is_released_after_lease_and_margin_or_when_its_drone_confirms(
    engine: Engine,
) -> None:
    add_drone(engine)
    first = spawn(engine, "a")
    second = spawn(engine, "b")
    drones.mark_lost(engine, now_ms() + 1)
    sweep_once(engine, now_ms(), 1e9)
    assert expiry(engine, first) is not None and expiry(engine, second) is not None
    drones.apply_events(engine, "d1", [BackendEvent(  # the drone confirms one gone
        seq=1, backend_id=first, state=BackendState(
            status=BackendStatus.TERMINATED, time=now_ms(), reason=TerminationReason.LOST))])
    assert expiry(engine, first) is None
    sweep_once(engine, now_ms() + LATER, 1e9)
    assert expiry(engine, second) is None


def test_fencing_tokens_grow_per_key(engine: Engine) -> None:
    add_drone(engine)
    tokens = []
    for _ in range(3):
        backend_id = spawn(engine, "fenced")
        with engine.begin() as conn:
            backends.record_state(conn, backend_id, BackendState(
                status=BackendStatus.TERMINATED, time=now_ms(),
                reason=TerminationReason.EXTERNAL))
        spawn(engine, f"other-{backend_id}")
        tokens.append(next(a["fencing_token"] for a in drones.pending_actions(engine, "d1")
                           if a["backend_id"] == backend_id))
    assert tokens == [1, 2, 3]


def test_a_second_drone_with_a_live_id_is_refused(engine: Engine) -> None:
    def hello(instance: str) -> Hello:
        return Hello(drone_id="twin", runtime="fake", host_volumes=[], instance=instance)

    first = drones.register(engine, hello("one"))
    with pytest.raises(drones.DroneIdInUse, match="in use by another live drone"):
        drones.register(engine, hello("two"))
    drones.register(engine, hello("one"))  # the same drone returning is welcome
    second = drones.register(engine, hello("one"))
    drones.disconnected(engine, "twin", first)  # an old socket's end changes nothing
    assert drones.list_drones(engine)[0].connected
    drones.disconnected(engine, "twin", second)
    drones.register(engine, hello("two"))  # the id is free once its drone is gone
