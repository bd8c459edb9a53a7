"""Scoped named volumes against the real Docker engine and containerd (issue #10).

A request's named volume lives under a runtime name derived from the key's namespace; a runtime
volume without Sailplane's labels for that namespace is never mounted; the operator can switch
named volumes off and cap them per namespace; ``sailplane volumes ls|rm`` only ever sees and
removes Sailplane's own. Every test runs on both runtimes (the ``runtime`` fixture), through the
drone's executor, and judges a mount by what the backend itself reads over HTTP.

Each test uses namespaces of its own, so the per-namespace counts and listings never see another
test's volumes; every Docker volume a test creates (ours or a planted foreign one) is named in
``drone.volumes`` and removed afterwards by the ``drone`` fixture, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from typer.testing import CliRunner

from sailplane.cli import app
from sailplane.drone.executor import Executor
from sailplane.mounts.named import runtime_name, volume_labels
from sailplane.protocol import SpawnBackend
from sailplane.spec import ExecutorConfig, KeyConfig
from sailplane.state import BackendState, BackendStatus, TerminationReason
from tests.integration.conftest import (
    CONTAINERD_TEST_NAMESPACE,
    ContainerdEngine,
    DroneHarness,
)

pytestmark = pytest.mark.docker

S = BackendStatus
WITHIN = 20.0


def namespace() -> str:
    return f"ns{uuid.uuid4().hex[:10]}"


def spawn_of(image: str, ns: str, *names: str, key: str | None = None) -> SpawnBackend:
    """A backend in namespace ``ns`` with named volume ``names[i]`` at ``/v{i}``, writable."""
    return SpawnBackend(
        backend_id=f"b-{uuid.uuid4().hex[:16]}",
        key=KeyConfig(name=key or f"k-{uuid.uuid4().hex[:8]}", namespace=ns),
        executable=ExecutorConfig.model_validate({"image": image, "volume_mounts": [
            {"type": "volume", "name": name, "target": f"/v{i}", "read_only": False}
            for i, name in enumerate(names)
        ]}),
        secret_token="not-a-secret",
    )


async def run_to_end(executor: Executor, spawn: SpawnBackend) -> BackendStatus:
    """Spawn and wait until it is ready or terminated; the status reached."""
    executor.spawn(spawn)
    await executor.wait_for(spawn.backend_id, S.READY, WITHIN)
    status = executor.status(spawn.backend_id)
    assert status is not None
    return status


async def ready(executor: Executor, spawn: SpawnBackend) -> None:
    assert await run_to_end(executor, spawn) is S.READY, last_state(executor, spawn.backend_id)


def last_state(executor: Executor, backend_id: str) -> BackendState:
    return [e.state for e in executor.store.pending() if e.backend_id == backend_id][-1]


async def get(executor: Executor, backend_id: str, cgi: str, **params: str) -> httpx.Response:
    address = executor.address(backend_id)
    assert address is not None
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        return await client.get(f"http://{address.host}:{address.port}/cgi-bin/{cgi}",
                                params=params)


async def refused(executor: Executor, spawn: SpawnBackend, drone: DroneHarness) -> str:
    """The spawn ends ``terminated`` with reason ``error`` and no container; its message."""
    assert await run_to_end(executor, spawn) is S.TERMINATED
    state = last_state(executor, spawn.backend_id)
    assert state.reason is TerminationReason.ERROR and state.message
    assert drone.engine.containers(spawn.backend_id) == []
    return state.message


class Volumes:
    """The engine's named volumes as the test sees them, around Sailplane: both runtimes."""

    def __init__(self, drone: DroneHarness) -> None:
        self.drone = drone
        self.engine = drone.engine
        self.docker = docker.from_env() if self.engine.name == "docker" else None

    def name(self, ns: str, requested: str) -> str:
        made = runtime_name(ns, requested, 0)
        self.drone.volumes.append(made)  # removed afterwards if it was made
        return made

    def _root(self) -> Path:
        assert isinstance(self.engine, ContainerdEngine)
        return self.engine.state_dir / "volumes"

    def exists(self, name: str) -> bool:
        if self.docker is not None:
            try:
                self.docker.volumes.get(name)
            except docker.errors.NotFound:
                return False
            return True
        return (self._root() / name).is_dir()

    def plant(self, name: str, labels: dict[str, str] | None, data: str) -> None:
        """A volume made around Sailplane (``labels`` None: none at all) holding ``/secret``."""
        self.drone.volumes.append(name)
        if self.docker is not None:
            self.docker.volumes.create(name, labels=labels or {})
            self.docker.containers.run(
                self.drone.image, ["sh", "-c", f"echo {data} > /v/secret"], remove=True,
                volumes={name: {"bind": "/v", "mode": "rw"}}, network_mode="none",
                labels={"dev.sailplane.test": "1"},
            )
            return
        (self._root() / name).mkdir(parents=True)
        (self._root() / name / "secret").write_text(f"{data}\n")
        if labels is not None:
            (self._root() / ".labels").mkdir(exist_ok=True)
            (self._root() / ".labels" / f"{name}.json").write_text(json.dumps(labels))

    def cli(self, *args: str) -> Any:
        """``sailplane volumes ARGS`` on this engine (in a thread when a loop runs: the CLI
        runs its own)."""
        flags = ["--runtime", self.engine.name]
        if isinstance(self.engine, ContainerdEngine):
            flags += ["--state-dir", str(self.engine.state_dir),
                      "--containerd-address", self.engine.ctr.ctr.address,
                      "--containerd-namespace", CONTAINERD_TEST_NAMESPACE]
        return CliRunner().invoke(app, ["volumes", *args, *flags])

    def close(self) -> None:
        if self.docker is not None:
            self.docker.close()


@pytest.fixture
def volumes(drone: DroneHarness) -> Any:
    made = Volumes(drone)
    yield made
    made.close()


def test_two_namespaces_asking_for_cache_get_two_volumes_and_a_namespace_reuses_its_own(
    drone, volumes
):
    editor, viewer = namespace(), namespace()
    names = [volumes.name(ns, "cache") for ns in (editor, viewer)]

    async def scenario() -> None:
        async with drone.running() as executor:
            first = spawn_of(drone.image, editor, "cache")
            await ready(executor, first)
            assert (await get(executor, first.backend_id, "write", path="/v0/x",
                              text="editors")).status_code == 200
            other = spawn_of(drone.image, viewer, "cache")
            await ready(executor, other)
            assert (await get(executor, other.backend_id, "read", path="/v0/x")).status_code \
                != 200  # an empty volume of its own
            await executor.terminate(first.backend_id, True, TerminationReason.EXTERNAL)
            # Another backend (another key) of the same namespace: the same volume, its data.
            again = spawn_of(drone.image, editor, "cache")
            await ready(executor, again)
            assert (await get(executor, again.backend_id, "read", path="/v0/x")).text \
                == "editors"

    asyncio.run(scenario())
    assert all(volumes.exists(name) for name in names)


def test_a_foreign_volume_and_another_namespaces_volume_are_refused_leaving_nothing(
    drone, volumes
):
    editor, mine = namespace(), namespace()
    # Unlabelled, at the very runtime name the request maps to (made by hand, or an old tool).
    foreign = volumes.name(mine, "foreign")
    volumes.plant(foreign, None, "foreign-data")
    # Labelled for another namespace, under this namespace's name: copied labels.
    stolen = volumes.name(mine, "stolen")
    volumes.plant(stolen, volume_labels(editor, "stolen"), "editors-data")
    # A plain volume of the host, as Docker users name them.
    host_volume = f"postgres_data-{uuid.uuid4().hex[:8]}"
    volumes.plant(host_volume, None, "postgres-data")
    fresh = volumes.name(mine, "fresh")
    volumes.name(mine, host_volume)

    async def scenario() -> None:
        async with drone.running() as executor:
            # A refusal in the second mount creates nothing for the first one either.
            message = await refused(executor, spawn_of(drone.image, mine, "fresh", "foreign"),
                                    drone)
            assert message == (f"volume_mounts[1].name: runtime volume {foreign!r} exists but "
                               f"was not created by Sailplane for namespace {mine!r}; refused")
            assert not volumes.exists(fresh)
            message = await refused(executor, spawn_of(drone.image, mine, "stolen"), drone)
            assert f"runtime volume {stolen!r} exists but was not created" in message

            # Naming a host volume reaches a volume of this namespace, never the host's.
            spawn = spawn_of(drone.image, mine, host_volume)
            await ready(executor, spawn)
            read = await get(executor, spawn.backend_id, "read", path="/v0/secret")
            assert "postgres-data" not in read.text

    asyncio.run(scenario())
    assert volumes.exists(foreign) and volumes.exists(stolen)  # refused, never touched


def test_named_volumes_switched_off_or_over_the_cap_are_refused(drone, volumes):
    ns, other = namespace(), namespace()
    c1, c2, c3 = (volumes.name(ns, name) for name in ("c1", "c2", "c3"))
    volumes.name(other, "c3")
    drone.policy = drone.policy.model_copy(update={"max_named_volumes_per_namespace": 2})

    async def scenario() -> None:
        async with drone.running() as executor:
            await ready(executor, spawn_of(drone.image, ns, "c1", "c2"))
            message = await refused(executor, spawn_of(drone.image, ns, "c3"), drone)
            assert message == (f"volume_mounts[0].name: namespace {ns!r} already holds 2 named "
                               f"volumes, the most this drone allows; {c3!r} is not created")
            # Mounting the ones it holds stays fine; another namespace has a cap of its own.
            await ready(executor, spawn_of(drone.image, ns, "c2", "c1"))
            await ready(executor, spawn_of(drone.image, other, "c3"))
        drone.policy = drone.policy.model_copy(update={"named_volumes": False})
        async with drone.running() as executor:
            message = await refused(executor, spawn_of(drone.image, ns, "c1"), drone)
            assert message == "volume_mounts[0].name: named volumes are disabled on this drone"

    asyncio.run(scenario())
    assert volumes.exists(c1) and volumes.exists(c2) and not volumes.exists(c3)


def test_volumes_ls_and_rm_see_and_remove_only_sailplanes_own(drone, volumes):
    ns = namespace()
    ours, busy = volumes.name(ns, "ours"), volumes.name(ns, "busy")
    foreign = volumes.name(ns, "foreign")
    volumes.plant(foreign, None, "foreign-data")
    copied = volumes.name(ns, "copied")  # our labels, but naming another volume
    volumes.plant(copied, volume_labels(ns, "ours"), "copied-data")

    async def scenario() -> None:
        async with drone.running() as executor:
            spawn = spawn_of(drone.image, ns, "ours")
            await ready(executor, spawn)
            await executor.terminate(spawn.backend_id, True, TerminationReason.EXTERNAL)
            for _ in range(100):  # the container is removed in the background
                if not drone.engine.containers(spawn.backend_id):
                    break
                await asyncio.sleep(0.1)
            await ready(executor, spawn_of(drone.image, ns, "busy"))

            listed = await asyncio.to_thread(volumes.cli, "ls", "--json", "--namespace", ns)
            assert listed.exit_code == 0, listed.output
            rows = json.loads(listed.stdout)
            assert sorted((row["name"], row["namespace"], row["requested"]) for row in rows) \
                == [(busy, ns, "busy"), (ours, ns, "ours")]
            assert all(row["created_at"] for row in rows)
            table = await asyncio.to_thread(volumes.cli, "ls", "--namespace", ns)
            assert table.exit_code == 0 and ours in table.stdout and foreign not in table.stdout

            done = await asyncio.to_thread(volumes.cli, "rm", foreign, copied, busy)
            assert done.exit_code == 1
            assert f"volume {foreign!r} was not created by Sailplane; refused" in done.output
            assert f"volume {copied!r} was not created by Sailplane; refused" in done.output
            assert f"volume {busy!r} is in use by container(s)" in done.output
            assert volumes.exists(foreign) and volumes.exists(copied) and volumes.exists(busy)

            done = await asyncio.to_thread(volumes.cli, "rm", "--namespace", ns, "ours")
            assert done.exit_code == 0, done.output
            assert done.stdout.split() == [ours] and not volumes.exists(ours)
            done = await asyncio.to_thread(volumes.cli, "rm", ours)
            assert done.exit_code == 1 and f"there is no volume {ours!r}" in done.output

    asyncio.run(scenario())


def test_an_old_unlabelled_record_is_not_ours(drone, volumes):
    """A volume of an older Sailplane (labelled true, no owner) is listed by no one."""
    ns = namespace()
    old = volumes.name(ns, "old")
    volumes.plant(old, {"dev.sailplane.volume": "true"}, "old-data")
    listed = volumes.cli("ls", "--json", "--namespace", ns)
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
