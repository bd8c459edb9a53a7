"""A spawn its drone never took is withdrawn when the drone is declared lost.

Found by the chaos suite (tests/chaos): a drone away past the lost deadline came back and
was sent the spawns queued for it while it was away, though their backends were
``terminated (lost)`` and their keys had gone to new backends: for a second, until its first
heartbeat revoked them, two containers ran for one key.
"""

from __future__ import annotations

from sqlalchemy import Engine, update

from sailplane.controller import backends, drones
from sailplane.controller.db import tables
from sailplane.spec import ConnectRequest
from sailplane.state import now_ms
from tests.controller.conftest import CONTROLLER_URL, PROXY_URL, add_drone, spawn_body

URLS = backends.Urls(proxy=PROXY_URL, controller=CONTROLLER_URL)


def spawn(engine: Engine, name: str) -> str:
    response, _ = backends.connect(engine, ConnectRequest.model_validate(spawn_body(name)), URLS,
                                   key_wait_seconds=0)
    return response.backend_id


def spawns_pending(engine: Engine, drone_id: str) -> list[str]:
    return [a["backend_id"] for a in drones.pending_actions(engine, drone_id)
            if a["type"] == "spawn"]


def test_a_lost_backends_untaken_spawn_is_never_sent(engine: Engine) -> None:
    add_drone(engine, "away")
    taken = spawn(engine, "a")
    untaken = spawn(engine, "b")
    [action] = [a for a in drones.pending_actions(engine, "away") if a["backend_id"] == taken]
    drones.ack_action(engine, "away", action["action_id"])  # the drone took this one
    drones.drain(engine, "away")
    add_drone(engine, "other")  # a live drone: its queued spawn stays
    other = spawn(engine, "c")
    with engine.begin() as conn:  # "away" went silent long ago
        conn.execute(update(tables.drones).where(tables.drones.c.id == "away")
                     .values(last_seen_ms=0))
    assert sorted(drones.mark_lost(engine, now_ms() - 60_000)) == sorted([taken, untaken])
    assert spawns_pending(engine, "away") == []
    assert spawns_pending(engine, "other") == [other]
