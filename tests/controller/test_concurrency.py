"""At most one backend per key: 50 connects racing for one new key all name the same backend,
through the plain function (threads), one controller's HTTP API, and two controllers
(processes) sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from sailplane.controller import backends, drones
from sailplane.controller.app import create_app
from sailplane.controller.db.engine import make_engine, migrate
from sailplane.controller.models import ConnectResponse
from sailplane.spec import ConnectRequest
from tests.controller.conftest import (
    API_TOKEN,
    CONTROLLER_URL,
    PROXY_URL,
    SECRET,
    add_drone,
    config_for,
    spawn_body,
)
from tests.controller.server import free_port, serving

RACERS = 50
URLS = backends.Urls(proxy=PROXY_URL, controller=CONTROLLER_URL)
SAILPLANE = Path(sys.executable).parent / "sailplane"


def assert_one_backend(engine: Engine, responses: list[dict[str, Any]]) -> None:
    assert len(responses) == RACERS
    ids = {r["backend_id"] for r in responses}
    assert len(ids) == 1, ids
    assert sum(r["spawned"] for r in responses) == 1
    assert len({r["token"] for r in responses}) == RACERS
    [backend] = backends.list_backends(engine)
    assert backend.backend_id in ids
    spawns = [a for a in drones.pending_actions(engine, backend.drone) if a["type"] == "spawn"]
    assert len(spawns) == 1


def test_threads_race_for_one_key(engine: Engine) -> None:
    add_drone(engine)
    request = ConnectRequest.model_validate(spawn_body("race"))
    barrier = threading.Barrier(RACERS)

    def racer(_: int) -> ConnectResponse:
        barrier.wait()
        response, _drone = backends.connect(engine, request, URLS)
        return response

    with ThreadPoolExecutor(RACERS) as pool:
        responses = [r.model_dump() for r in pool.map(racer, range(RACERS))]
    assert_one_backend(engine, responses)


async def race(base_urls: list[str], name: str = "race") -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=RACERS),
                                 headers={"authorization": f"Bearer {API_TOKEN}"}) as c:
        replies = await asyncio.gather(*(
            c.post(f"{base_urls[i % len(base_urls)]}/ctrl/connect", json=spawn_body(name))
            for i in range(RACERS)
        ))
    for reply in replies:
        assert reply.status_code == 200, reply.text
    return [reply.json() for reply in replies]


def test_http_race_for_one_key(database_url: str) -> None:
    app = create_app(config_for(database_url))
    engine: Engine = app.state.engine
    try:
        with serving(app) as base_url:
            add_drone(engine)
            responses = asyncio.run(race([base_url]))
        assert_one_backend(engine, responses)
    finally:
        engine.dispose()


@pytest.fixture
def two_controllers(postgres_url: str, tmp_path: Path) -> Iterator[list[str]]:
    """Two ``sailplane controller`` processes on one PostgreSQL database, started together
    on an empty schema (so their migrations race too)."""
    ports = [free_port(), free_port()]
    processes = []
    for port in ports:
        log = (tmp_path / f"controller-{port}.log").open("w")
        processes.append(subprocess.Popen(
            [str(SAILPLANE), "controller", "--host", "127.0.0.1", "--port", str(port),
             "--database-url", postgres_url, "--proxy-url", PROXY_URL],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SAILPLANE_SECRET": SECRET},
        ))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 30
        for url, process in zip(urls, processes, strict=True):
            while True:
                if process.poll() is not None:
                    logs = "\n".join(p.read_text() for p in tmp_path.glob("controller-*.log"))
                    pytest.fail(f"controller {url} exited {process.returncode}:\n{logs}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"controller {url} did not answer"
                time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_two_controllers_race_for_one_key(postgres_url: str, two_controllers: list[str]) -> None:
    engine = make_engine(postgres_url)
    try:
        add_drone(engine)
        responses = asyncio.run(race(two_controllers))
        assert_one_backend(engine, responses)
    finally:
        engine.dispose()


def test_migrations_take_turns(postgres_url: str) -> None:
    """Controllers starting together on an empty PostgreSQL database: every migrate() succeeds.

    (Several controllers share only PostgreSQL; SQLite is the one-controller embedded case,
    where a brand-new file's switch to WAL can report "database is locked" to a racing
    process.)"""
    engines = [make_engine(postgres_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        barrier.wait()
        migrate(engine)

    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            list(pool.map(start, engines))
        add_drone(engines[0])
        assert [d.drone_id for d in drones.list_drones(engines[1])] == ["d1"]
    finally:
        for engine in engines:
            engine.dispose()
