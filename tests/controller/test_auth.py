"""Credentials on the controller, over real HTTP (uvicorn) and real WebSockets: every ``/ctrl``
route, both sockets and ``/metrics`` refuse a missing, wrong or other-role credential; a drone
credential holds its drone id; a browser's foreign ``Origin`` is refused whatever it carries."""

from __future__ import annotations

import asyncio
import logging
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sailplane.controller import drones
from sailplane.controller.app import create_app
from sailplane.credentials import CredentialError, Role, mint
from sailplane.protocol import Heartbeat, Hello
from tests.controller.conftest import SECRET, add_drone, bearer, config_for, spawn_body
from tests.controller.server import serving

OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopqrstuvwxyz"
EVIL = "https://evil.example"
GOOD_ORIGIN = "https://console.example"

# (headers, status): every way a caller can lack the api role.
NOT_API = {
    "none": ({}, 401),
    "not bearer": ({"authorization": f"Basic {mint(SECRET, Role.API, 'x')}"}, 401),
    "garbage": ({"authorization": "Bearer nope"}, 401),
    "other secret": ({"authorization": f"Bearer {mint(OTHER_SECRET, Role.API, 'x')}"}, 401),
    "tampered": ({"authorization": "Bearer "
                  + mint(SECRET, Role.DRONE, "d1").replace(".drone.", ".api.")}, 401),
    "drone": (bearer(Role.DRONE, "d1"), 403),
    "proxy": (bearer(Role.PROXY, "p"), 403),
    "metrics": (bearer(Role.METRICS, "prom"), 403),
}


class Served:
    def __init__(self, app: FastAPI, url: str) -> None:
        self.app = app
        self.url = url
        self.ws = url.replace("http://", "ws://")
        self.http = httpx.Client(base_url=url, timeout=10)

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(), **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)


@pytest.fixture
def served_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(**config: Any) -> Iterator[Served]:
        app = create_app(config_for(f"sqlite:///{tmp_path}/c{len(started)}.db", **config))
        with serving(app) as url:
            made = Served(app, url)
            started.append(made)
            yield made
            made.http.close()
        app.state.engine.dispose()

    yield start


@pytest.fixture
def served(served_factory: Any) -> Iterator[Served]:
    yield from served_factory(allowed_origins=[GOOD_ORIGIN])


def ctrl_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every HTTP route under /ctrl, with its path parameters filled in."""
    found: list[tuple[str, str]] = []
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/ctrl"):
            path = re.sub(r"\{[^}]+\}", "x1", route.path)
            found.extend((method, path) for method in sorted(route.methods or ()))
    return found


def test_every_ctrl_route_is_found(served: Served) -> None:
    routes = ctrl_routes(served.app)
    assert ("POST", "/ctrl/connect") in routes
    assert ("POST", "/ctrl/d/x1/drain") in routes
    assert len(routes) >= 6


@pytest.mark.parametrize("caller", NOT_API)
def test_every_ctrl_route_and_metrics_refuse_a_caller_without_the_api_role(
    served: Served, caller: str,
) -> None:
    headers, status = NOT_API[caller]
    add_drone(served.engine)
    for method, path in ctrl_routes(served.app):
        response = served.http.request(method, path, headers=headers, json=spawn_body())
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["error"]["code"] == ("unauthorized" if status == 401
                                                    else "forbidden")
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
    metrics = served.http.get("/metrics", headers=headers)
    assert metrics.status_code == (200 if caller == "metrics" else status), caller
    assert served.api("GET", "/ctrl/backends").json() == []  # nothing was made
    assert not any(d.draining for d in drones.list_drones(served.engine))


def test_pub_and_health_answer_without_a_credential(served: Served) -> None:
    add_drone(served.engine)
    backend_id = served.api("POST", "/ctrl/connect", json=spawn_body()).json()["backend_id"]
    assert served.http.get("/health").json() == {"status": "ok"}
    assert served.http.get(f"/pub/b/{backend_id}/status").json()["status"] == "scheduled"
    assert served.api("GET", "/metrics").status_code == 200


def test_open_metrics(served_factory: Any) -> None:
    for served in served_factory(open_metrics=True):
        assert "sailplane_drones" in served.http.get("/metrics").text
        assert served.http.get("/ctrl/drones").status_code == 401


def refused_upgrade(url: str, headers: dict[str, str]) -> int:
    async def attempt() -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url, additional_headers=headers, open_timeout=5):
                pass
        return refused.value.response.status_code
    return asyncio.run(attempt())


@pytest.mark.parametrize(("path", "role"), [("/ctrl/drone-socket", Role.DRONE),
                                            ("/ctrl/proxy-socket", Role.PROXY)])
def test_both_sockets_refuse_the_upgrade_without_their_role(
    served: Served, path: str, role: Role,
) -> None:
    url = served.ws + path
    for caller, (headers, status) in NOT_API.items():
        if caller != role.value:
            expected = 403 if caller in ("drone", "proxy", "metrics") else status
            assert refused_upgrade(url, headers) == expected, caller
    assert refused_upgrade(url, bearer(Role.API)) == 403  # the api token is no socket token
    own = bearer(role, "d1")
    assert refused_upgrade(url, {**own, "origin": EVIL}) == 403


def test_a_drone_credential_for_d1_cannot_register_as_d2(served: Served) -> None:
    async def hello_as(drone_id: str, token_for: str) -> int | None:
        async with ws_connect(served.ws + "/ctrl/drone-socket", open_timeout=5,
                              additional_headers=bearer(Role.DRONE, token_for)) as socket:
            await socket.send(Hello(drone_id=drone_id, runtime="fake",
                                    host_volumes=[]).model_dump_json())
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), 5)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(hello_as("d2", "d1")) == 1008
    assert [d.drone_id for d in drones.list_drones(served.engine)] == []


def test_no_one_receives_another_drones_spawn(served: Served) -> None:
    add_drone(served.engine, "d1")
    made = served.api("POST", "/ctrl/connect",
                      json=spawn_body(executable={"env": {"DB_PASSWORD": "hunter2"}})).json()
    url = served.ws + "/ctrl/drone-socket"
    assert refused_upgrade(url, {}) == 401  # a fake drone without a credential

    async def frames(token_for: str, drone_id: str) -> list[str]:
        """Every frame the controller sends within a second after ``hello``."""
        received: list[str] = []
        async with ws_connect(url, open_timeout=5,
                              additional_headers=bearer(Role.DRONE, token_for)) as socket:
            await socket.send(Hello(drone_id=drone_id, runtime="fake",
                                    host_volumes=[]).model_dump_json())
            await socket.send(Heartbeat(time=0).model_dump_json())
            try:
                while True:
                    received.append(str(await asyncio.wait_for(socket.recv(), 1)))
            except (TimeoutError, ConnectionClosed):
                return received

    assert asyncio.run(frames("d2", "d1")) == []  # d2's credential claiming d1: closed
    assert asyncio.run(frames("d2", "d2")) == []  # d2 itself: nothing of d1's
    spawns = asyncio.run(frames("d1", "d1"))  # the real d1 gets it
    assert len(spawns) == 1 and made["backend_id"] in spawns[0] and "hunter2" in spawns[0]


FORM = {"content-type": "application/x-www-form-urlencoded"}


def test_a_cross_site_request_cannot_drain_or_terminate(served: Served) -> None:
    add_drone(served.engine, "d1")
    backend_id = served.api("POST", "/ctrl/connect", json=spawn_body()).json()["backend_id"]
    targets = ["/ctrl/d/d1/drain", f"/ctrl/b/{backend_id}/soft-terminate",
               f"/ctrl/b/{backend_id}/hard-terminate"]
    for path in targets:
        # A plain HTML form posted from another site: no Authorization header can be in it.
        form = served.http.post(path, headers={**FORM, "origin": EVIL}, content=b"a=1")
        assert form.status_code == 403, path
        assert served.http.post(path, headers=FORM, content=b"a=1").status_code == 401
        # Even with a credential the browser would somehow send along: refused by Origin.
        with_token = served.api("POST", path, headers={"origin": EVIL})
        assert with_token.status_code == 403, path
        assert "origin" in with_token.json()["error"]["message"]
        assert served.api("POST", path, headers={"origin": "null"}).status_code == 403
    assert not drones.list_drones(served.engine)[0].draining
    assert [a["type"] for a in drones.pending_actions(served.engine, "d1")] == ["spawn"]
    # The operator's own console origin is let through (with a credential).
    assert served.api("POST", "/ctrl/d/d1/drain",
                      headers={"origin": GOOD_ORIGIN}).json() == {"draining": True}
    assert served.http.post("/ctrl/d/d1/drain", headers={"origin": GOOD_ORIGIN}
                            ).status_code == 401


def test_insecure_checks_no_credential_and_says_so(
    served_factory: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    for served in served_factory(insecure=True):
        assert served.http.get("/ctrl/drones").status_code == 200
        assert served.http.get("/metrics").status_code == 200

        async def register(url: str) -> None:
            async with ws_connect(url, open_timeout=5) as socket:
                await socket.send(Hello(drone_id="anyone", runtime="fake",
                                        host_volumes=[]).model_dump_json())
                await socket.send(Heartbeat(time=0).model_dump_json())
                await asyncio.sleep(0.3)

        asyncio.run(register(served.ws + "/ctrl/drone-socket"))
        assert served.http.post("/ctrl/d/anyone/drain",
                                headers={"origin": EVIL}).status_code == 403
    messages = [r.getMessage() for r in caplog.records]
    assert any("INSECURE" in m and "any client may call" in m for m in messages)
    assert any("drone anyone connected without a credential" in m and "INSECURE" in m
               for m in messages)


def test_no_secret_and_not_insecure_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="--insecure"):
        create_app(config_for(f"sqlite:///{tmp_path}/c.db", secrets=[]))


def test_the_controller_database_is_0600(served: Served, tmp_path: Path) -> None:
    served.api("GET", "/ctrl/drones")
    files = [p for p in tmp_path.iterdir() if p.name.startswith("c0.db")]
    assert {p.name for p in files} >= {"c0.db", "c0.db-wal"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
