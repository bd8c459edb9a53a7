"""Poison-proof links: nothing a request or a drone sends can wedge a drone's link.

* sizes are checked where a request enters (413 for a body, 400 for ``auth``), and an action
  too big for a frame is never sent: its backend ends ``terminated (error)``;
* actions reach the drone even when PostgreSQL commits a lower id after a higher one;
* an action the drone refuses ends its backend, it is not sent again;
* a message that does not parse is skipped, the link stays.

A served controller (uvicorn in a thread) and a fake drone speaking the protocol over a real
WebSocket; the databases are real (SQLite, and PostgreSQL where the test needs concurrency).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, insert
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from sailplane.controller import backends, drones
from sailplane.controller.app import create_app
from sailplane.controller.db.tables import drone_actions
from sailplane.controller.limits import MAX_BODY_BYTES
from sailplane.credentials import Role
from sailplane.protocol import (
    MAX_FRAME_BYTES,
    ActionAck,
    ActionRefused,
    BackendEvent,
    Heartbeat,
    Hello,
)
from sailplane.spec import MAX_AUTH_BYTES
from sailplane.state import BackendState, BackendStatus, now_ms
from tests.controller.conftest import API_TOKEN, add_drone, bearer, config_for, spawn_body
from tests.controller.server import serving

BURSTS = 5
BURST_SIZE = 50
SETTLE_SECONDS = 20.0


class Served:
    def __init__(self, app: FastAPI, url: str) -> None:
        self.app = app
        self.url = url
        self.ws = url.replace("http://", "ws://")
        self.engine: Engine = app.state.engine


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    app = create_app(config_for(database_url))
    try:
        with serving(app) as url:
            yield Served(app, url)
    finally:
        app.state.engine.dispose()


@pytest.fixture
def served_pg(postgres_url: str) -> Iterator[Served]:
    app = create_app(config_for(postgres_url))
    try:
        with serving(app) as url:
            yield Served(app, url)
    finally:
        app.state.engine.dispose()


@contextlib.asynccontextmanager
async def drone_socket(served: Served, drone_id: str = "d1") -> AsyncIterator[ClientConnection]:
    async with ws_connect(served.ws + "/ctrl/drone-socket", open_timeout=5,
                          additional_headers=bearer(Role.DRONE, drone_id)) as socket:
        await socket.send(Hello(drone_id=drone_id, runtime="fake", host_volumes=[])
                          .model_dump_json())
        yield socket


class FakeDrone:
    """Takes every spawn (acknowledges it and reports it ``ready``) and counts what came."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.spawned: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self.seq = 0

    async def run(self) -> None:
        async for frame in self.socket:
            message = json.loads(frame)
            self.frames.append(message)
            if message["type"] == "spawn":
                self.spawned.append(message["backend_id"])
                await self.socket.send(ActionAck(action_id=message["action_id"])
                                       .model_dump_json())
                self.seq += 1
                await self.socket.send(BackendEvent(
                    seq=self.seq, backend_id=message["backend_id"], address="127.0.0.1:1",
                    state=BackendState(status=BackendStatus.READY, time=now_ms()),
                ).model_dump_json())
            elif message["type"] == "terminate":
                await self.socket.send(ActionAck(action_id=message["action_id"])
                                       .model_dump_json())


def statuses(engine: Engine) -> dict[str, str]:
    return {b.backend_id: b.status.value for b in backends.list_backends(engine)}


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# -- sizes at the door ---------------------------------------------------------------------


def post(served: Served, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(served.url + "/ctrl/connect", json=body, timeout=30,
                      headers={"authorization": f"Bearer {API_TOKEN}"}, **kwargs)


def test_an_oversized_body_is_refused_413_naming_the_limit(served: Served) -> None:
    add_drone(served.engine)
    huge = spawn_body(executable={"env": {"BIG": "x" * 2_000_000}})
    response = post(served, huge)
    assert response.status_code == 413, response.text
    assert str(MAX_BODY_BYTES) in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts as it streams
        text = json.dumps(huge).encode()
        for start in range(0, len(text), 65536):
            yield text[start:start + 65536]

    chunked = httpx.post(served.url + "/ctrl/connect", content=chunks(), timeout=30,
                         headers={"authorization": f"Bearer {API_TOKEN}",
                                  "content-type": "application/json"})
    assert chunked.status_code == 413
    assert backends.list_backends(served.engine) == []
    assert post(served, spawn_body()).status_code == 200  # and the next one is served


def test_an_oversized_auth_is_refused_400_naming_the_limit(served: Served) -> None:
    add_drone(served.engine)
    body = {**spawn_body(), "auth": {"blob": "x" * (MAX_AUTH_BYTES + 1)}}
    response = post(served, body)
    assert response.status_code == 400, response.text
    assert "MAX_AUTH_BYTES" in response.json()["error"]["message"]
    joined = post(served, {**spawn_body(), "auth": {"role": "editor"}})
    assert joined.status_code == 200
    again = post(served, {"key": {"name": "doc-1"}, "auth": {"blob": "x" * 100_000}})
    assert again.status_code == 400  # nor can a join grow what is stored


# -- delivery ------------------------------------------------------------------------------


def test_a_late_commit_of_a_lower_action_id_is_still_delivered(postgres_url: str) -> None:
    """PostgreSQL: action 1 is inserted first but commits after action 2 was read."""
    from sailplane.controller.db.engine import make_engine, migrate

    engine = make_engine(postgres_url)
    try:
        migrate(engine)
        add_drone(engine)
        early = engine.connect()
        transaction = early.begin()
        low = early.execute(insert(drone_actions).values(
            drone_id="d1", payload={"type": "noop"}, acked=False, created_ms=now_ms(),
        )).inserted_primary_key[0]  # type: ignore[index]
        with engine.begin() as conn:
            high = conn.execute(insert(drone_actions).values(
                drone_id="d1", payload={"type": "noop"}, acked=False, created_ms=now_ms(),
            )).inserted_primary_key[0]  # type: ignore[index]
        assert low < high
        sent = {a["action_id"] for a in drones.pending_actions(engine, "d1")}
        assert sent == {high}
        transaction.commit()
        early.close()
        assert [a["action_id"] for a in drones.pending_actions(engine, "d1", sent)] == [low]
    finally:
        engine.dispose()


def test_bursts_of_concurrent_connects_leave_nothing_scheduled(served_pg: Served) -> None:
    served = served_pg
    add_drone(served.engine)

    async def scenario() -> None:
        async with drone_socket(served) as socket:
            drone = FakeDrone(socket)
            runner = asyncio.create_task(drone.run())
            async with httpx.AsyncClient(
                timeout=30, limits=httpx.Limits(max_connections=BURST_SIZE),
                headers={"authorization": f"Bearer {API_TOKEN}"},
            ) as client:
                for burst in range(BURSTS):
                    replies = await asyncio.gather(*(
                        client.post(served.url + "/ctrl/connect",
                                    json=spawn_body(f"b{burst}-{i}"))
                        for i in range(BURST_SIZE)))
                    assert all(r.status_code == 200 for r in replies)
            total = BURSTS * BURST_SIZE
            await wait_for(lambda: all(s == "ready" for s in statuses(served.engine).values())
                           and len(statuses(served.engine)) == total,
                           SETTLE_SECONDS, "every backend to be ready")
            assert len(drone.spawned) == len(set(drone.spawned)) == total
            runner.cancel()

    asyncio.run(scenario())


def test_an_action_too_big_for_a_frame_ends_its_backend_and_the_next_ones_flow(
    served: Served,
) -> None:
    add_drone(served.engine)
    poisoned = post(served, spawn_body("poison")).json()["backend_id"]
    with served.engine.begin() as conn:  # grow the queued spawn past the frame limit
        conn.execute(drone_actions.update().where(drone_actions.c.drone_id == "d1").values(
            payload={"type": "spawn", "backend_id": poisoned, "pad": "x" * MAX_FRAME_BYTES}))

    async def scenario() -> None:
        async with drone_socket(served) as socket:
            drone = FakeDrone(socket)
            runner = asyncio.create_task(drone.run())
            healthy = post(served, spawn_body("healthy")).json()["backend_id"]
            await wait_for(lambda: statuses(served.engine).get(healthy) == "ready", 10,
                           "the healthy backend")
            assert drone.spawned == [healthy]
            runner.cancel()

    asyncio.run(scenario())
    [summary] = [b for b in backends.list_backends(served.engine) if b.backend_id == poisoned]
    assert (summary.status.value, summary.reason) == ("terminated", "error")
    assert summary.message and "frame limit" in summary.message
    assert drones.pending_actions(served.engine, "d1") == []


def test_a_refused_spawn_ends_its_backend_and_is_not_sent_again(served: Served) -> None:
    add_drone(served.engine)
    backend_id = post(served, spawn_body()).json()["backend_id"]

    async def scenario() -> tuple[list[str], dict[str, Any]]:
        async with drone_socket(served) as socket:
            spawn = json.loads(await asyncio.wait_for(socket.recv(), 5))
            await socket.send(ActionRefused(action_id=spawn["action_id"],
                                            message="cannot parse it").model_dump_json())
            await wait_for(lambda: statuses(served.engine)[backend_id] == "terminated", 5,
                           "the refused backend to end")
        async with drone_socket(served) as socket:  # a reconnect: nothing comes again
            frames: list[str] = []
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(str(await asyncio.wait_for(socket.recv(), 1)))
            [summary] = backends.list_backends(served.engine)
            assert (summary.reason, summary.message) == ("error", "cannot parse it")
            again = await asyncio.to_thread(post, served, spawn_body())  # the key is free
            assert again.status_code == 200, again.text
            return frames, again.json()

    frames, again = asyncio.run(scenario())
    assert frames == []
    assert again["spawned"] is True


def test_bad_frames_do_not_end_a_drone_link(served: Served) -> None:
    add_drone(served.engine)

    async def scenario() -> dict[str, Any]:
        async with drone_socket(served) as socket:
            await socket.send("not json")
            await socket.send(b"\x00\x01binary")
            await socket.send(json.dumps({"type": "backend_event", "seq": "x"}))
            await socket.send(json.dumps({"type": "who-knows"}))
            await socket.send(Heartbeat(time=1, live=[]).model_dump_json())
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), 5))
            return reply

    assert asyncio.run(scenario())["type"] == "lease_renewal"
