"""A proxy's route request for a backend still starting is answered when it is ready
(``controller/route_hold.py``), and a new backend's spawn reaches its drone straight from the
connect (``drone_socket.send_now``). Over real sockets to a served controller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from sailplane.controller.app import create_app
from sailplane.credentials import Role
from sailplane.protocol import (
    BackendEvent,
    Heartbeat,
    Hello,
    RouteInfo,
    RouteRequest,
    SpawnBackend,
    to_drone,
    to_proxy,
)
from sailplane.state import BackendState, BackendStatus, TerminationReason, now_ms
from tests.controller.conftest import bearer, config_for, spawn_body
from tests.controller.server import serving

ANSWER_SECONDS = 10.0  # a bound on waiting for a frame, never a measured time


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    app: FastAPI = create_app(config_for(f"sqlite:///{tmp_path}/c.db"))
    with serving(app) as url:
        yield url
    app.state.engine.dispose()


@asynccontextmanager
async def socket(base_url: str, path: str, role: Role) -> AsyncIterator[ClientConnection]:
    url = base_url.replace("http://", "ws://") + path
    async with ws_connect(url, open_timeout=ANSWER_SECONDS,
                          additional_headers=bearer(role, "d1")) as connection:
        yield connection


async def next_of(connection: ClientConnection, kind: type[Any]) -> Any:
    """The next frame of ``kind`` (others, such as lease renewals, are skipped)."""
    async with asyncio.timeout(ANSWER_SECONDS):
        while True:
            frame = await connection.recv()
            parsed = (to_drone if kind is SpawnBackend else to_proxy).validate_json(frame)
            if isinstance(parsed, kind):
                return parsed


async def spawned(base_url: str, drone: ClientConnection) -> tuple[str, str]:
    """Connect a new key; its backend id and user token, once the drone has its spawn."""
    async with httpx.AsyncClient(base_url=base_url, headers=bearer()) as api:
        answer = (await api.post("/ctrl/connect", json=spawn_body())).json()
    spawn = await next_of(drone, SpawnBackend)
    assert spawn.backend_id == answer["backend_id"]
    token = answer["url"].rstrip("/").rsplit("/", 1)[1]
    return answer["backend_id"], token


async def report(drone: ClientConnection, seq: int, backend_id: str, state: BackendState,
                 address: str | None = None) -> None:
    await drone.send(BackendEvent(seq=seq, backend_id=backend_id, state=state,
                                  address=address).model_dump_json())


async def drone_hello(drone: ClientConnection) -> None:
    await drone.send(Hello(drone_id="d1", runtime="fake", host_volumes=[]).model_dump_json())
    await drone.send(Heartbeat(time=now_ms()).model_dump_json())


def test_a_route_request_for_a_starting_backend_is_answered_when_it_is_ready(
    base_url: str,
) -> None:
    async def scenario() -> tuple[RouteInfo, RouteInfo]:
        async with socket(base_url, "/ctrl/drone-socket", Role.DRONE) as drone, \
                socket(base_url, "/ctrl/proxy-socket", Role.PROXY) as proxy:
            await drone_hello(drone)
            backend_id, token = await spawned(base_url, drone)
            await proxy.send(RouteRequest(token=token).model_dump_json())
            # Answered in order of readiness: the unknown token's "no route" comes first,
            # while the starting backend's request waits.
            await proxy.send(RouteRequest(token="t-unknown").model_dump_json())
            unknown = await next_of(proxy, RouteInfo)
            await report(drone, 1, backend_id, BackendState(status=BackendStatus.READY,
                                                            time=now_ms()), "10.9.0.7:8080")
            return unknown, await next_of(proxy, RouteInfo)

    unknown, route = asyncio.run(scenario())
    assert unknown.token == "t-unknown" and unknown.address is None
    assert route.address == "10.9.0.7:8080" and route.backend_id is not None


def test_a_held_route_request_is_answered_no_route_when_its_backend_ends_first(
    base_url: str,
) -> None:
    async def scenario() -> RouteInfo:
        async with socket(base_url, "/ctrl/drone-socket", Role.DRONE) as drone, \
                socket(base_url, "/ctrl/proxy-socket", Role.PROXY) as proxy:
            await drone_hello(drone)
            backend_id, token = await spawned(base_url, drone)
            await proxy.send(RouteRequest(token=token).model_dump_json())
            await report(drone, 1, backend_id, BackendState(
                status=BackendStatus.TERMINATED, time=now_ms(), reason=TerminationReason.ERROR))
            answer: RouteInfo = await next_of(proxy, RouteInfo)
            return answer

    route = asyncio.run(scenario())
    assert route.address is None and route.backend_id is None
