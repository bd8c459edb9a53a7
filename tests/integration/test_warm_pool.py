"""Warm pools with late-bound mounts, on the real Docker engine (``drone/warm_pool.py``).

A pool of ``sailplane/static`` containers is started ahead; a matching spawn claims one, gets
its key's directory injected at the requested target and its identity file, and is judged
through its own HTTP CGI scripts, like every drone test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sailplane.drone.executor import Executor
from sailplane.drone.warm_pool import WarmPool, WarmPoolSpec
from sailplane.runtime.base import WARM_LABEL
from sailplane.spec import ResourceLimits
from sailplane.state import BackendStatus, TerminationReason
from tests.integration.conftest import DroneHarness
from tests.integration.test_drone_docker import (
    events,
    read,
    spawn_of,
    spawn_ready,
    terminated,
    write,
)

pytestmark = pytest.mark.docker

S = BackendStatus
FILL_WITHIN = 30.0


@pytest.fixture
def runtime() -> str:
    """Warm pools are Docker's (the containerd runtime has none yet)."""
    return "docker"


@asynccontextmanager
async def pooled(drone: DroneHarness, size: int = 1) -> AsyncIterator[tuple[Executor, WarmPool]]:
    async with drone.running() as executor:
        pool = WarmPool(executor.runtime, [WarmPoolSpec(drone.image, size)], ResourceLimits())
        executor.warm_pool = pool
        pool.start()
        try:
            await pool.wait_full(FILL_WITHIN)
            yield executor, pool
        finally:
            await pool.close()


def warm_containers(drone: DroneHarness) -> list[dict[str, object]]:
    client = drone.engine.client  # type: ignore[attr-defined]
    found: list[dict[str, object]] = client.api.containers(
        all=True, filters={"label": [WARM_LABEL, f"dev.sailplane.drone={drone.drone_id}"]})
    return found


def test_a_claimed_warm_backend_sees_its_keys_files_at_the_target(drone: DroneHarness) -> None:
    key = f"doc-{uuid.uuid4().hex[:8]}"
    mine = drone.roots["data"] / "editor" / key
    mine.mkdir(parents=True)
    (mine / "note").write_text("mine")
    (drone.roots["data"] / "editor" / "other").mkdir()
    (drone.roots["config"] / "app.toml").write_text("greeting = 'hi'")

    async def scenario() -> None:
        async with pooled(drone) as (executor, pool):
            spawn = spawn_of(drone.image, key=key, volume_mounts=[
                {"type": "host", "volume": "data", "sub_path": "{namespace}/{key}",
                 "target": "/data", "read_only": False},
                {"type": "host", "volume": "config", "target": "/etc/app"},
            ])
            backend_id = await spawn_ready(executor, spawn)
            # It is the warm container, renamed: no cold start happened.
            [claimed] = [c for c in warm_containers(drone)
                         if f"/sailplane-{backend_id}" in c["Names"]]  # type: ignore[operator]
            assert claimed["State"] == "running"
            assert (await read(executor, backend_id, "/data/note")).text == "mine"
            assert (await read(executor, backend_id, "/data/../other")).status_code == 500
            assert (await write(executor, backend_id, "/data/new", "x")).status_code == 200
            assert (mine / "new").read_text() == "x"
            assert (await read(executor, backend_id, "/etc/app/app.toml")).status_code == 200
            denied = await write(executor, backend_id, "/etc/app/app.toml", "no")
            assert "Read-only file system" in denied.text
            identity = json.loads((await read(executor, backend_id,
                                              "/run/sailplane/identity.json")).text)
            assert identity["backend_id"] == backend_id
            assert identity["key"]["name"] == key
            assert identity["secret_token"] == spawn.secret_token
            await pool.wait_full(FILL_WITHIN)  # refilled in the background
            assert pool.available(drone.image) == 1
            await executor.terminate(backend_id, False, TerminationReason.EXTERNAL)
            last = await terminated(executor, backend_id)
            assert last.reason is TerminationReason.EXTERNAL

    asyncio.run(scenario())


def test_a_failed_claim_destroys_the_container_and_ends_the_backend_with_the_reason(
    drone: DroneHarness
) -> None:
    async def scenario() -> None:
        async with pooled(drone) as (executor, pool):
            [before] = warm_containers(drone)
            # /bin/sh is a symlink in the image (busybox --install -s): no mount lands there.
            spawn = spawn_of(drone.image, volume_mounts=[
                {"type": "host", "volume": "config", "target": "/bin/sh/x"}])
            executor.spawn(spawn)
            last = await terminated(executor, spawn.backend_id)
            assert last.reason is TerminationReason.ERROR
            assert "symlink or not a directory" in (last.message or "")
            ids = {c["Id"] for c in warm_containers(drone)}
            assert before["Id"] not in ids  # destroyed, not returned to the pool
            assert drone.engine.containers(spawn.backend_id) == []
            await pool.wait_full(FILL_WITHIN)  # refilled after a failed claim too
            assert pool.available(drone.image) == 1

    asyncio.run(scenario())


def test_a_request_the_pool_cannot_serve_starts_cold(drone: DroneHarness) -> None:
    async def scenario() -> None:
        async with pooled(drone) as (executor, pool):
            backend_id = await spawn_ready(executor, spawn_of(drone.image, env={"MODE": "x"}))
            assert pool.available(drone.image) == 1  # untouched
            assert drone.engine.containers(backend_id)  # a container labelled for it
            await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
            await terminated(executor, backend_id)

    asyncio.run(scenario())


def test_a_restarted_drone_adopts_a_claimed_backend_and_drops_unclaimed_ones(
    drone: DroneHarness
) -> None:
    async def scenario() -> None:
        async with pooled(drone) as (executor, _pool):
            backend_id = await spawn_ready(executor, spawn_of(drone.image))
            assert [e.status for e in events(executor.store, backend_id)][-1] is S.READY
        async with drone.running() as executor:  # no pool this time
            assert executor.status(backend_id) is S.READY
            assert (await read(executor, backend_id, "/srv/index.html")).status_code == 200
            assert [c for c in warm_containers(drone)
                    if not any(f"/sailplane-{backend_id}" == n
                               for n in c["Names"])] == []  # type: ignore[attr-defined]
            await executor.terminate(backend_id, True, TerminationReason.EXTERNAL)
            await terminated(executor, backend_id)

    asyncio.run(scenario())


def test_closing_the_pool_while_it_fills_leaves_no_container(drone: DroneHarness) -> None:
    async def scenario() -> None:
        async with drone.running() as executor:
            pool = WarmPool(executor.runtime, [WarmPoolSpec(drone.image, 2)], ResourceLimits())
            pool.start()
            await asyncio.sleep(0.05)  # a start is under way
            await pool.close()
            assert warm_containers(drone) == []

    asyncio.run(scenario())
