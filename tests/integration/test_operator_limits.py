"""The drone operator's caps on a real engine (docs/isolation.md): every backend runs under
the operator's default memory and pids limits, a request may lower them, and one asking for
more (or for a tmpfs above the cap) ends ``terminated``/``error`` with nothing left behind.

Each test runs once per runtime (``docker``, ``containerd``). The limits are read on the host
from the cgroups the backend's process is in, which is what the kernel enforces, whatever the
runtime's own records say; on Docker its ``HostConfig`` must say the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from sailplane.drone.executor import ExecutorSettings
from sailplane.drone.limits import OperatorLimits
from sailplane.runtime.containerd.runtime import container_id as ctr_container_id
from sailplane.runtime.docker.runtime import container_name
from sailplane.state import BackendStatus, TerminationReason
from tests.integration.conftest import ContainerdEngine, DockerEngine, DroneHarness, Engine
from tests.integration.test_drone_docker import (
    SERVE_SRV,
    history,
    shell,
    spawn_of,
    spawn_ready,
    terminated,
)

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
CAPS = OperatorLimits(max_tmpfs_bytes=64 * MiB, default_memory_bytes=128 * MiB,
                      default_pids_limit=64)
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned number, v2 as "max".
UNLIMITED_FROM = 1 << 62


def init_pid(engine: Engine, backend_id: str) -> int:
    """The host pid of the backend's first process."""
    if isinstance(engine, DockerEngine):
        state = engine.client.api.inspect_container(container_name(backend_id))["State"]
        return int(state["Pid"])
    assert isinstance(engine, ContainerdEngine)
    for line in engine.ctr("tasks", "ls").stdout.splitlines()[1:]:
        cid, pid, *_ = line.split()
        if cid == ctr_container_id(backend_id):
            return int(pid)
    raise AssertionError(f"no task for backend {backend_id}")


def cgroup_file(pid: int, controller: str, v1_name: str, v2_name: str) -> str:
    """A file of the cgroup ``pid`` is in, for ``controller``, on cgroup v1 or v2."""
    unified = (CGROUP_ROOT / "cgroup.controllers").exists()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if unified and controllers == "":
            return (CGROUP_ROOT / path.lstrip("/") / v2_name).read_text()
        if not unified and controller in controllers.split(","):
            return (CGROUP_ROOT / controller / path.lstrip("/") / v1_name).read_text()
    raise AssertionError(f"process {pid} is in no {controller} cgroup")


def limit(text: str) -> int | None:
    value = text.strip()
    return None if value == "max" or int(value) >= UNLIMITED_FROM else int(value)


def limits_in_force(engine: Engine, backend_id: str) -> tuple[int | None, int | None]:
    """(memory bytes, pids) the kernel holds the backend to."""
    pid = init_pid(engine, backend_id)
    memory = limit(cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max"))
    pids = limit(cgroup_file(pid, "pids", "pids.max", "pids.max"))
    return memory, pids


def forks_refused(engine: Engine, backend_id: str) -> int:
    """How many times the pids limit refused a fork in the backend's cgroup."""
    text = cgroup_file(init_pid(engine, backend_id), "pids", "pids.events", "pids.events")
    return next(int(count) for name, count in (line.split() for line in text.splitlines())
                if name == "max")


def capped(drone: DroneHarness) -> ExecutorSettings:
    """The drone's policy and settings with :data:`CAPS`, as ``sailplane drone`` makes them."""
    drone.policy = CAPS.cap_policy(drone.policy)
    return dataclasses.replace(drone.settings, limits=CAPS)


def test_backends_run_under_the_default_limits_which_a_request_may_lower(
    drone: DroneHarness,
) -> None:
    settings = capped(drone)
    default = spawn_of(drone.image)
    lowered = spawn_of(drone.image, resource_limits={"memory_limit_bytes": 64 * MiB,
                                                     "pids_limit": 32})
    # A fork storm against a limit of 16: the sleeps end, so the server can fork again.
    storm = spawn_of(drone.image, resource_limits={"pids_limit": 16}, command=shell(
        f"(for i in $(seq 40); do sleep 2 & done) 2>/dev/null; exec {SERVE_SRV}"
    ))

    async def scenario() -> None:
        async with drone.running(settings) as executor:
            await asyncio.gather(*(spawn_ready(executor, spawn)
                                   for spawn in (default, lowered, storm)))
            assert limits_in_force(drone.engine, default.backend_id) == (128 * MiB, 64)
            assert limits_in_force(drone.engine, lowered.backend_id) == (64 * MiB, 32)
            assert limits_in_force(drone.engine, storm.backend_id) == (128 * MiB, 16)
            assert forks_refused(drone.engine, storm.backend_id) > 0
            assert forks_refused(drone.engine, default.backend_id) == 0
            if isinstance(drone.engine, DockerEngine):
                host = drone.engine.client.api.inspect_container(
                    container_name(default.backend_id))["HostConfig"]
                assert (host["Memory"], host["PidsLimit"]) == (128 * MiB, 64)

    asyncio.run(scenario())


def test_asking_above_a_cap_ends_in_error_and_leaves_no_container(drone: DroneHarness) -> None:
    settings = capped(drone)
    greedy = spawn_of(drone.image, resource_limits={"memory_limit_bytes": 256 * MiB})
    many = spawn_of(drone.image, resource_limits={"pids_limit": 65})
    big_tmpfs = spawn_of(drone.image, volume_mounts=[
        {"type": "tmpfs", "target": "/scratch", "size_bytes": 1 << 30},
    ])

    async def scenario() -> None:
        async with drone.running(settings) as executor:
            for spawn in (greedy, many, big_tmpfs):
                executor.spawn(spawn)
            for spawn, message in [
                (greedy, f"resource_limits.memory_limit_bytes: {256 * MiB} is above this "
                         f"drone's cap of {128 * MiB}"),
                (many, "resource_limits.pids_limit: 65 is above this drone's cap of 64"),
                (big_tmpfs, f"volume_mounts[0].size_bytes: {1 << 30} is above this drone's "
                            f"tmpfs cap of {64 * MiB}"),
            ]:
                last = await terminated(executor, spawn.backend_id)
                assert (last.reason, last.message) == (TerminationReason.ERROR, message)
                # Refused before any work: no image step, no container, nothing to remove.
                assert history(executor.store, spawn.backend_id) == [BackendStatus.TERMINATED]
                assert drone.engine.containers(spawn.backend_id) == []

    asyncio.run(scenario())
