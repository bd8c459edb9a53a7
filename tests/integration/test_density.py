"""Many backends on one drone, stopped all at once; containerd finds Docker's images (issue 17).

No timing is asserted here: how fast a full drone spawns and stops is bench/density.py's job.
These tests check what must hold whatever the speed: every backend of a filled drone becomes
ready, and stop-all (what Ctrl-C of ``sailplane dev`` runs) leaves nothing behind: no
container, no staging mount, no address on the bridge, and on containerd no task, snapshot,
network namespace, cgroup or log either; and there the drone signals every init itself and
deletes containers in batches rather than running ``ctr`` once per backend for each step.
And the containerd runtime imports an image that only the local Docker engine has, once
however many spawns ask for it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sailplane.drone.executor import Executor
from sailplane.drone.store import DroneStore
from sailplane.errors import RuntimeFailure
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.policy import MountPolicy
from sailplane.runtime.base import Runtime
from sailplane.runtime.containerd.ctr import (
    CTR_TIMEOUT_SECONDS,
    Ctr,
    normalize_image,
)
from sailplane.runtime.containerd.leftovers import traces
from sailplane.runtime.containerd.netns_pool import NetnsPool
from sailplane.runtime.containerd.network import NamespaceNetwork
from sailplane.runtime.containerd.runtime import ContainerdRuntime
from sailplane.runtime.containerd.runtime import container_id as ctr_container_id
from sailplane.runtime.docker.network import backend_network
from sailplane.runtime.docker.runtime import container_name
from sailplane.spec import PullPolicy
from sailplane.state import BackendStatus, TerminationReason
from tests.integration.conftest import (
    NAMESPACE_GC_WAIT_SECONDS,
    TEST_SETTINGS,
    DockerEngine,
    Engine,
    SyncCtr,
)
from tests.integration.test_drone_docker import spawn_of

pytestmark = pytest.mark.docker

S = BackendStatus
# How many backends each runtime's drone is filled with, and how many spawns are under way
# at once; bounded, and generous waits that only stop a broken run.
FILL = {"docker": 100, "containerd": 100}
IN_FLIGHT = 16
READY_WITHIN = 180.0
STOP_ALL_WITHIN = 300.0


def test_a_filled_drone_stops_everything_it_runs_and_leaves_nothing(drone, runtime):
    count = FILL[runtime]
    # Every backend has a pinned host mount, so stop-all has staging mounts to release too.
    spawns = [spawn_of(drone.image, volume_mounts=[{
        "type": "host", "volume": "data", "sub_path": "{key}", "target": "/data",
        "read_only": False}]) for _ in range(count)]
    ids = [spawn.backend_id for spawn in spawns]

    async def scenario() -> None:
        async with drone.running() as executor:
            slots = asyncio.Semaphore(IN_FLIGHT)

            async def one(index: int) -> None:
                async with slots:
                    executor.spawn(spawns[index])
                    await executor.wait_for(ids[index], S.READY, READY_WITHIN)

            await asyncio.gather(*(one(index) for index in range(count)))
            assert [b for b in ids if executor.status(b) is not S.READY] == []
            assert executor.live_count == count
            assert len(drone.engine.drone_containers(drone.drone_id)) == count
            assert sorted(drone.staging.backends()) == sorted(ids)
            look = Leftovers.of(drone.engine, executor.runtime, ids)
            # The look after the stop would see each of them (cgroups: one per hierarchy).
            before = await look.left()
            assert all(len(found) >= count for found in before.values())
            assert set(before) == ({"containers", "tasks", "snapshots", "netns", "addresses",
                                    "cgroups", "logs"} if runtime == "containerd"
                                   else {"addresses"})
            ctr = RecordingCtr.install(executor.runtime)

            async with asyncio.timeout(STOP_ALL_WITHIN):
                await executor.terminate_all(TerminationReason.EXTERNAL)
            assert [b for b in ids if executor.status(b) is not S.TERMINATED] == []
            assert executor.live_count == 0
            # All gone the moment terminate_all returns: nothing is removed later.
            assert drone.engine.drone_containers(drone.drone_id) == []
            assert drone.staging.backends() == []
            assert await look.left() == {}
            if ctr is not None:
                # The drone signalled every init itself and deleted in batches.
                commands = Counter(" ".join(args[:2]) for args in ctr.calls)
                assert commands["tasks kill"] == 0, commands
                assert 0 < commands["containers delete"] <= count // 2, commands

    asyncio.run(scenario())


@dataclass(frozen=True)
class RecordingCtr(Ctr):
    """``ctr`` that notes the arguments of every call (one call, one ``ctr`` process)."""

    calls: list[tuple[str, ...]] = field(default_factory=list)

    @classmethod
    def install(cls, runtime: Runtime) -> RecordingCtr | None:
        if not isinstance(runtime, ContainerdRuntime):
            return None
        recording = cls(runtime.ctr.address, runtime.ctr.namespace)
        runtime.ctr = recording
        return recording

    async def output(self, *args: str, timeout: float = CTR_TIMEOUT_SECONDS) -> tuple[str, str]:
        self.calls.append(args)
        return await super().output(*args, timeout=timeout)


@dataclass
class Leftovers:
    """What the backends of a drone hold outside the drone, to find gone after stop-all:
    containerd's look (``leftovers.traces``: container, task, snapshot, network namespace,
    address, cgroups, log); on Docker, their address (the containers are checked apart)."""

    runtime: Runtime
    containers: list[str]  # containerd ids, or Docker's

    @classmethod
    def of(cls, engine: Engine, runtime: Runtime, ids: list[str]) -> Leftovers:
        if isinstance(runtime, ContainerdRuntime):
            return cls(runtime, [ctr_container_id(b) for b in ids])
        assert isinstance(engine, DockerEngine)
        return cls(runtime, [engine.client.api.inspect_container(container_name(b))["Id"]
                             for b in ids])

    async def left(self) -> dict[str, list[str]]:
        if isinstance(self.runtime, ContainerdRuntime):
            return await traces(self.runtime.ctr, self.runtime.log_dir, self.containers,
                                self.runtime.drone_id, self.runtime.netns.unused())
        held = sorted(set(backend_network().holders().values()) & set(self.containers))
        return {"addresses": held} if held else {}


# -- containerd imports what the local Docker engine has --------------------------------------


@pytest.fixture
def import_namespace(drone_ctr: SyncCtr, backend_image: str) -> Iterator[Ctr]:
    """A containerd namespace of this test's own, without the image; removed afterwards with
    whatever the test put in it (containers, their network namespaces, the image)."""
    ctr = Ctr(drone_ctr.ctr.address, f"sailplane-test-import-{uuid.uuid4().hex[:8]}")
    sync = SyncCtr(ctr)
    assert normalize_image(backend_image) not in sync("images", "ls", "-q").stdout.split()
    try:
        yield ctr
    finally:
        for cid in sync("containers", "ls", "-q", check=False).stdout.split():
            sync("tasks", "delete", "--force", cid, check=False)
            sync("containers", "delete", cid, check=False)
        sync("images", "rm", "--sync", normalize_image(backend_image), check=False)
        deadline = time.monotonic() + NAMESPACE_GC_WAIT_SECONDS
        while sync("namespaces", "rm", ctr.namespace, check=False).returncode:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)


@pytest.mark.containerd
def test_containerd_imports_an_image_from_docker_once_for_concurrent_spawns(
    import_namespace: Ctr, backend_image: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "state"
    drone_id = f"test-{uuid.uuid4().hex[:12]}"
    runtime = ContainerdRuntime(drone_id, state, import_namespace.address,
                                import_namespace.namespace)
    store = DroneStore(tmp_path / "drone.sqlite3")
    staging = StagingArea(tmp_path.resolve() / "staging")
    executor = Executor(runtime, MountPolicy(), store, staging, TEST_SETTINGS)
    # Never: the import is local, so even a spawn that may not pull gets the image.
    spawns = [spawn_of(backend_image, pull_policy=PullPolicy.NEVER if index % 2 else None)
              for index in range(6)]
    caplog.set_level(logging.INFO, logger="sailplane.runtime.containerd.images")

    async def scenario() -> None:
        await executor.start()
        try:
            for spawn in spawns:
                executor.spawn(spawn)
            await asyncio.gather(*(executor.wait_for(spawn.backend_id, S.READY, READY_WITHIN)
                                   for spawn in spawns))
            assert [executor.status(s.backend_id) for s in spawns] == [S.READY] * len(spawns)
            await executor.terminate_all(TerminationReason.EXTERNAL)
        finally:
            await executor.close()
            store.close()
            network = NamespaceNetwork()
            await NetnsPool(network, drone_id, size=0).sweep(set())  # if it failed half-way
            staging.sweep(keep=())

    asyncio.run(scenario())
    listed = SyncCtr(import_namespace)("images", "ls", "-q").stdout.split()
    assert normalize_image(backend_image) in listed
    imports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("imported")]
    assert len(imports) == 1, imports
    assert any("importing image" in r.getMessage() for r in caplog.records)


@pytest.mark.containerd
def test_an_image_in_neither_store_fails_saying_where_it_looked_and_what_to_run(
    import_namespace: Ctr, tmp_path: Path,
) -> None:
    runtime = ContainerdRuntime("test-missing", tmp_path / "state", import_namespace.address,
                                import_namespace.namespace)
    image = f"sailplane/missing-{uuid.uuid4().hex[:8]}:latest"

    async def scenario() -> str:
        try:
            await runtime.prepare(image, PullPolicy.NEVER)  # Never: no registry is asked
        except RuntimeFailure as exc:
            return exc.message
        finally:
            await runtime.close()
        raise AssertionError("prepare did not fail")

    message = asyncio.run(scenario())
    assert f"namespace {import_namespace.namespace!r}" in message
    assert import_namespace.address in message
    assert "local Docker engine" in message
    assert f"docker save {image} | ctr" in message
    assert "pull_policy is Never" in message
