"""Fixtures for tests against the real Docker engine (and the containerd it runs).

The drone tests run on both runtimes: the ``runtime`` fixture (ids ``docker``, ``containerd``)
chooses an :class:`Engine`, and the containerd one gets the image imported into its own
namespace (``sailplane-test-drone``) once per session.

Nothing is pulled: the image is ``sailplane/static:latest`` built by ``images/build``,
or, where that script is missing, an equivalent built here from the host's static busybox.
Every container a test starts carries the label ``dev.sailplane.test=1`` and is removed when
the test ends, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import pytest
from docker.types import Mount

from sailplane.drone.executor import Executor, ExecutorSettings
from sailplane.drone.store import DroneStore
from sailplane.mounts.pin import StagingArea
from sailplane.mounts.plan import plan_mounts
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.mounts.resolved import ResolvedMount
from sailplane.mounts.validate import TemplateValues
from sailplane.runtime.base import BACKEND_LABEL, DRONE_LABEL, Runtime
from sailplane.runtime.containerd.ctr import (
    DOCKER_CONTAINERD_ADDRESS,
    SYSTEM_CONTAINERD_ADDRESS,
    Ctr,
    normalize_image,
)
from sailplane.runtime.containerd.netns_pool import NetnsPool
from sailplane.runtime.containerd.network import NamespaceNetwork, bridge_exists, remove_network
from sailplane.runtime.containerd.runtime import ADDRESS_LABEL, ContainerdRuntime
from sailplane.runtime.containerd.runtime import container_id as ctr_container_id
from sailplane.runtime.docker.network import backend_network
from sailplane.runtime.docker.network import remove_network as remove_docker_network
from sailplane.runtime.docker.runtime import DockerRuntime, container_name
from sailplane.spec import ExecutorConfig

REPO = Path(__file__).resolve().parents[2]
IMAGE = "sailplane/static:latest"
# Built only when images/build is not there; a name of its own so it never shadows the real one.
FALLBACK_IMAGE = "sailplane/test-static:latest"
BUSYBOX = "/bin/busybox"
TEST_LABELS = {"dev.sailplane.test": "1"}
CONTAINER_TIMEOUT_SECONDS = 60
IMAGE_BUILD_TIMEOUT_SECONDS = 300

FALLBACK_DOCKERFILE = b"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
"""


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine. The backends' bridge and its firewall rules, which the first backend
    started makes, are removed at the end unless they were there before."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine answers ({exc}); start dockerd or run scripts/test")
    had_bridge = backend_network().exists()
    yield client

    async def all_containers() -> set[str]:
        return {c["Id"] for c in client.api.containers(all=True, quiet=True)}

    # Tests remove containers behind the drone's back, which leaves their addresses booked.
    asyncio.run(backend_network().release_stale(all_containers))
    if not had_bridge:
        asyncio.run(remove_docker_network())
    client.close()


@pytest.fixture(scope="session")
def image(docker_client: docker.DockerClient) -> str:
    """``sailplane/static:latest``, built by ``images/build`` if missing; never pulled."""
    if has_image(docker_client, IMAGE):
        return IMAGE
    build = REPO / "images" / "build"
    if os.access(build, os.X_OK) and shutil.which("docker"):
        done = subprocess.run(
            [str(build), "static"], capture_output=True, text=True,
            timeout=IMAGE_BUILD_TIMEOUT_SECONDS, check=False,
        )
        if done.returncode != 0 or not has_image(docker_client, IMAGE):
            pytest.fail(f"images/build static failed ({done.returncode}):\n"
                        f"{done.stdout}\n{done.stderr}")
        return IMAGE
    return _build_fallback(docker_client)


def has_image(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def _build_fallback(client: docker.DockerClient) -> str:
    """FROM scratch + the host's static busybox, as images/static does."""
    if not os.path.isfile(BUSYBOX):
        pytest.fail(f"no {BUSYBOX} to build a test image from (apt-get install busybox-static)")
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(FALLBACK_DOCKERFILE)
        tar.addfile(info, io.BytesIO(FALLBACK_DOCKERFILE))
        tar.add(BUSYBOX, arcname="busybox")
    context.seek(0)
    client.images.build(
        fileobj=context, custom_context=True, tag=FALLBACK_IMAGE, rm=True, pull=False,
        labels=TEST_LABELS,
    )
    return FALLBACK_IMAGE


# A finished container: exit code, stdout, stderr. The same shape as a finished `ctr run`.
Ran = subprocess.CompletedProcess[str]
RunInDocker = Callable[[str, list[dict[str, Any]]], Ran]
Plan = Callable[..., list[ResolvedMount]]


@pytest.fixture
def run_in_docker(docker_client: docker.DockerClient, image: str) -> Iterator[RunInDocker]:
    """Run ``sh -c SCRIPT`` with the given ``HostConfig.Mounts`` entries, to completion.

    The entries go to the Engine API unchanged, through the low-level client. The container
    has no network: these tests need none, and they then pass without the docker0 bridge.
    """
    api = docker_client.api
    started: list[str] = []

    def run(script: str, mounts: list[dict[str, Any]]) -> Ran:
        # The stubs ask for docker.types.Mount, a dict subclass; the engine gets JSON either way.
        host_config = api.create_host_config(
            mounts=cast(list[Mount], mounts), network_mode="none",
        )
        container = api.create_container(
            image, ["sh", "-c", script], host_config=host_config, labels=TEST_LABELS,
        )
        started.append(container["Id"])
        api.start(container)
        status = api.wait(container, timeout=CONTAINER_TIMEOUT_SECONDS)
        stdout = api.logs(container, stdout=True, stderr=False).decode()
        stderr = api.logs(container, stdout=False, stderr=True).decode()
        return Ran(["sh", "-c", script], int(status["StatusCode"]), stdout, stderr)

    yield run
    for container_id in started:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container_id, force=True, v=True)


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """The roots of two host volumes an operator published: ``data`` (rw), ``config`` (ro)."""
    made = {name: tmp_path / name for name in ("data", "config")}
    for path in made.values():
        path.mkdir()
    return {name: path.resolve() for name, path in made.items()}


@pytest.fixture
def plan(roots: dict[str, Path], tmp_path: Path) -> Iterator[Plan]:
    """``plan(volume_mounts, key="doc-42")``: resolve and pin like a drone, creating what is
    missing in ``data`` (nothing is created in the read-only ``config``). Each call pins for a
    backend of its own; every pin is removed afterwards.

    The namespace is ``editor``, so ``{namespace}/{key}`` is ``editor/doc-42`` by default.
    """
    policy = MountPolicy.build([
        HostVolume(name="data", path=str(roots["data"]), access=Access.RW),
        HostVolume(name="config", path=str(roots["config"]), access=Access.RO),
    ])
    staging = StagingArea(tmp_path.resolve() / "staging")
    calls = iter(range(1_000_000))

    def resolve(volume_mounts: list[dict[str, Any]], key: str = "doc-42") -> list[ResolvedMount]:
        executor = ExecutorConfig.model_validate({"image": IMAGE, "volume_mounts": volume_mounts})
        values = TemplateValues(key=key, namespace="editor", backend=f"b-{next(calls)}")
        return plan_mounts(executor, policy, values, apply=True, staging=staging, pin=True)

    try:
        yield resolve
    finally:
        staging.sweep(keep=())


# -- the drone's executor on either runtime (tests/integration/test_drone_docker.py) ----------


@pytest.fixture(scope="session")
def backend_image(docker_client: docker.DockerClient) -> str:
    """``sailplane/static:latest`` as ``images/build`` makes it now, with its CGI scripts.

    The build is idempotent (a hash label), so an up-to-date image costs a second; an image
    built before ``/cgi-bin`` was added is rebuilt. Nothing is pulled.
    """
    build = REPO / "images" / "build"
    if not (os.access(build, os.X_OK) and shutil.which("docker")):
        pytest.fail("images/build or the docker CLI is missing")
    done = subprocess.run(
        [str(build), "static"], capture_output=True, text=True,
        timeout=IMAGE_BUILD_TIMEOUT_SECONDS, check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"images/build static failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return IMAGE


@dataclass(frozen=True)
class Found:
    """A backend's container as its engine lists it, in the same terms for both runtimes."""

    labels: dict[str, str]
    running: bool


class Engine:
    """One runtime's engine, as the drone tests see it: runtimes for a drone, and direct
    looks and changes that go around Sailplane (a container killed while the drone is down)."""

    name: str

    def runtime(self, drone_id: str) -> Runtime:
        raise NotImplementedError

    def containers(self, backend_id: str) -> list[Found]:
        raise NotImplementedError

    def drone_containers(self, drone_id: str) -> list[Found]:
        raise NotImplementedError

    def identity(self, backend_id: str) -> tuple[Any, ...]:
        """What changes if the backend's process is restarted or replaced."""
        raise NotImplementedError

    def kill(self, backend_id: str) -> None:
        raise NotImplementedError

    def delete(self, backend_id: str) -> None:
        raise NotImplementedError

    def run_stray(self, image: str, backend_id: str, drone_id: str) -> None:
        """A running container labelled as one of ``drone_id``'s, that no drone started."""
        raise NotImplementedError

    def volume_labels(self, name: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def exec(self, backend_id: str, argv: list[str], user: str = "0") -> tuple[int, str]:
        """Run ``argv`` inside the backend's container; its exit status and output."""
        raise NotImplementedError

    def ip(self, backend_id: str) -> str:
        """The backend's own address on its bridge (not the address the drone uses)."""
        raise NotImplementedError

    def cleanup(self, drone_id: str, volumes: list[str]) -> None:
        raise NotImplementedError


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    def runtime(self, drone_id: str) -> Runtime:
        return DockerRuntime(drone_id)

    def _list(self, label: str) -> list[Found]:
        # One call: no inspect that could race with a removal under way.
        listed = self.client.api.containers(all=True, filters={"label": label})
        return [Found(dict(c["Labels"]), c["State"] == "running") for c in listed]

    def containers(self, backend_id: str) -> list[Found]:
        return self._list(f"{BACKEND_LABEL}={backend_id}")

    def drone_containers(self, drone_id: str) -> list[Found]:
        return self._list(f"{DRONE_LABEL}={drone_id}")

    def identity(self, backend_id: str) -> tuple[Any, ...]:
        state = self.client.api.inspect_container(container_name(backend_id))
        return state["Id"], state["State"]["StartedAt"], state["State"]["Running"]

    def kill(self, backend_id: str) -> None:
        self.client.api.kill(container_name(backend_id), signal="SIGKILL")

    def delete(self, backend_id: str) -> None:
        self.client.api.remove_container(container_name(backend_id), force=True)

    def run_stray(self, image: str, backend_id: str, drone_id: str) -> None:
        self.client.containers.run(
            image, ["sleep", "60"], detach=True, name=container_name(backend_id),
            labels={BACKEND_LABEL: backend_id, DRONE_LABEL: drone_id},
        )

    def volume_labels(self, name: str) -> dict[str, Any] | None:
        try:
            labels: dict[str, Any] = self.client.volumes.get(name).attrs["Labels"]
        except docker.errors.NotFound:
            return None
        return labels

    def ip(self, backend_id: str) -> str:
        state = self.client.api.inspect_container(container_name(backend_id))
        address = backend_network().address_of(state["Id"])
        assert address is not None, f"backend {backend_id} has no address on the bridge"
        return address

    def exec(self, backend_id: str, argv: list[str], user: str = "0") -> tuple[int, str]:
        container = self.client.containers.get(container_name(backend_id))
        code, output = container.exec_run(argv, user=user)
        assert isinstance(code, int) and isinstance(output, bytes)  # not streamed
        return code, output.decode(errors="replace")

    def cleanup(self, drone_id: str, volumes: list[str]) -> None:
        remove_drone_containers(self.client, drone_id)
        for name in volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_volume(name, force=True)


# Not `sailplane`, so the tests never touch what a real drone runs on this machine.
CONTAINERD_TEST_NAMESPACE = "sailplane-test-drone"
CONTAINERD_SOCKETS = (DOCKER_CONTAINERD_ADDRESS, SYSTEM_CONTAINERD_ADDRESS)
NAMESPACE_GC_WAIT_SECONDS = 10


@dataclass(frozen=True)
class SyncCtr:
    """``ctr`` for the tests: blocking, bound to the test namespace."""

    ctr: Ctr

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.ctr.argv(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=CONTAINER_TIMEOUT_SECONDS, check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
        return done


class ContainerdEngine(Engine):
    name = "containerd"

    def __init__(self, ctr: SyncCtr, state_dir: Path) -> None:
        self.ctr = ctr
        self.state_dir = state_dir

    def runtime(self, drone_id: str) -> Runtime:
        return ContainerdRuntime(drone_id, self.state_dir, self.ctr.ctr.address,
                                 self.ctr.ctr.namespace)

    def _list(self, label: str, value: str) -> list[Found]:
        ids = self.ctr("containers", "ls", "-q", f'labels."{label}"=={json.dumps(value)}')
        tasks = {fields[0]: fields[2] for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]
                 if len(fields := line.split()) >= 3}
        found = []
        for cid in ids.stdout.split():
            info = self.ctr("containers", "info", cid, check=False)
            if info.returncode == 0:  # else removed since it was listed
                labels = json.loads(info.stdout).get("Labels") or {}
                found.append(Found(labels, tasks.get(cid) == "RUNNING"))
        return found

    def containers(self, backend_id: str) -> list[Found]:
        return self._list(BACKEND_LABEL, backend_id)

    def drone_containers(self, drone_id: str) -> list[Found]:
        return self._list(DRONE_LABEL, drone_id)

    def identity(self, backend_id: str) -> tuple[Any, ...]:
        cid = ctr_container_id(backend_id)
        listed = self.ctr("tasks", "ls").stdout.splitlines()[1:]
        [task] = [line.split() for line in listed if line.split()[0] == cid]
        return tuple(task)  # id, pid, status

    def kill(self, backend_id: str) -> None:
        self.ctr("tasks", "kill", "--signal", "SIGKILL", ctr_container_id(backend_id))

    def delete(self, backend_id: str) -> None:
        self.ctr("tasks", "delete", "--force", ctr_container_id(backend_id))
        self.ctr("containers", "delete", ctr_container_id(backend_id))

    def run_stray(self, image: str, backend_id: str, drone_id: str) -> None:
        self.ctr("run", "--detach", "--null-io", "--label", f"{BACKEND_LABEL}={backend_id}",
                 "--label", f"{DRONE_LABEL}={drone_id}", normalize_image(image),
                 ctr_container_id(backend_id), "sleep", "60")

    def volume_labels(self, name: str) -> dict[str, Any] | None:
        runtime = ContainerdRuntime("-", self.state_dir, self.ctr.ctr.address)
        return runtime.volume_labels(name)

    def ip(self, backend_id: str) -> str:
        info = json.loads(self.ctr("containers", "info", ctr_container_id(backend_id)).stdout)
        address: str = info["Labels"][ADDRESS_LABEL]
        return address

    def exec(self, backend_id: str, argv: list[str], user: str = "0") -> tuple[int, str]:
        done = self.ctr("tasks", "exec", "--exec-id", f"t-{uuid.uuid4().hex[:8]}", "--user",
                        user, ctr_container_id(backend_id), *argv, check=False)
        return done.returncode, done.stdout + done.stderr

    def cleanup(self, drone_id: str, volumes: list[str]) -> None:
        """Named volumes are directories in the state dir, which goes with tmp_path."""
        value = json.dumps(drone_id)
        listed = self.ctr("containers", "ls", "-q", f'labels."{DRONE_LABEL}"=={value}')
        network = NamespaceNetwork()
        for cid in listed.stdout.split():
            self.ctr("tasks", "delete", "--force", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)
            asyncio.run(network.detach(cid))  # its namespace, address and NAT rules
        # The namespaces and addresses its backends took from its pool.
        asyncio.run(NetnsPool(network, drone_id, size=0).sweep(set()))


@pytest.fixture(scope="session")
def drone_ctr() -> Iterator[SyncCtr]:
    """``ctr`` on the containerd that dockerd runs (or a system one), in the test namespace."""
    ctr = Ctr(os.environ.get("SAILPLANE_CONTAINERD_SOCKET") or next(
        (path for path in CONTAINERD_SOCKETS if os.path.exists(path)), CONTAINERD_SOCKETS[0]
    ), CONTAINERD_TEST_NAMESPACE)
    if not ctr.available():
        pytest.fail("no ctr binary (it comes with Debian's containerd, a dependency of docker.io)")
    client = SyncCtr(ctr)
    version = client("version", check=False)
    if version.returncode != 0:
        pytest.fail(f"containerd at {ctr.address} does not answer: {version.stderr.strip()}")
    had_bridge = bridge_exists()
    yield client
    if not had_bridge:  # the backends' bridge and its firewall rules, made by the first one
        asyncio.run(remove_network())


@pytest.fixture(scope="session")
def containerd_image(
    drone_ctr: SyncCtr, docker_client: docker.DockerClient, backend_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """``sailplane/static:latest`` imported once per session from ``docker save``; nothing is
    pulled. Removed afterwards, and the namespace with it once containerd has collected."""
    archive = tmp_path_factory.mktemp("containerd-image") / "image.tar"
    with archive.open("wb") as out:
        for chunk in docker_client.images.get(backend_image).save(named=True):
            out.write(chunk)
    drone_ctr("images", "import", str(archive))
    archive.unlink()
    ref = normalize_image(backend_image)
    assert ref in drone_ctr("images", "ls", "-q").stdout.split()
    yield backend_image
    drone_ctr("images", "rm", "--sync", ref, check=False)
    deadline = time.monotonic() + NAMESPACE_GC_WAIT_SECONDS
    while drone_ctr("namespaces", "rm", CONTAINERD_TEST_NAMESPACE, check=False).returncode:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)


RUNTIME_PARAMS = [
    pytest.param("docker", id="docker"),
    pytest.param("containerd", id="containerd", marks=pytest.mark.containerd),
]


@pytest.fixture(params=RUNTIME_PARAMS)
def runtime(request: pytest.FixtureRequest) -> str:
    """The runtime a drone test runs on; every such test runs once on each."""
    name: str = request.param
    return name


@pytest.fixture
def engine(
    runtime: str, docker_client: docker.DockerClient, backend_image: str,
    request: pytest.FixtureRequest, tmp_path: Path,
) -> Engine:
    if runtime == "docker":
        return DockerEngine(docker_client)
    request.getfixturevalue("containerd_image")
    return ContainerdEngine(request.getfixturevalue("drone_ctr"), tmp_path / "state")


@dataclass
class DroneHarness:
    """One test's drone: a unique id, a store file, a mount policy, and executors over them.

    :meth:`running` gives a started :class:`Executor` on a new runtime of the test's engine
    and a new :class:`DroneStore` over the same file each time, so two in a row are a drone
    restart.
    """

    drone_id: str
    store_path: Path
    roots: dict[str, Path]
    policy: MountPolicy
    image: str
    settings: ExecutorSettings
    engine: Engine
    staging: StagingArea
    volumes: list[str] = field(default_factory=list)  # named volumes to remove afterwards

    @asynccontextmanager
    async def running(self, settings: ExecutorSettings | None = None) -> AsyncIterator[Executor]:
        store = DroneStore(self.store_path)
        executor = Executor(
            self.engine.runtime(self.drone_id), self.policy, store, self.staging,
            settings or self.settings,
        )
        try:
            await executor.start()
            yield executor
        finally:
            await executor.close()
            store.close()


# Small enough that a whole lifecycle takes about a second; tests that need more say so.
TEST_SETTINGS = ExecutorSettings(grace_seconds=2.0, startup_timeout_seconds=15.0)


@pytest.fixture
def drone(
    engine: Engine, backend_image: str, roots: dict[str, Path], tmp_path: Path,
) -> Iterator[DroneHarness]:
    """A drone of its own for one test; afterwards every container labelled with its id (and
    every volume the test named) is force-removed, whatever the test's outcome."""
    drone_id = f"test-{uuid.uuid4().hex[:12]}"
    policy = MountPolicy.build([
        HostVolume(name="data", path=str(roots["data"]), access=Access.RW),
        HostVolume(name="config", path=str(roots["config"]), access=Access.RO),
    ])
    harness = DroneHarness(
        drone_id=drone_id, store_path=tmp_path / "drone.sqlite3", roots=roots, policy=policy,
        image=backend_image, settings=TEST_SETTINGS, engine=engine,
        staging=StagingArea(tmp_path.resolve() / "staging"),
    )
    try:
        yield harness
    finally:
        engine.cleanup(drone_id, harness.volumes)
        harness.staging.sweep(keep=())


def remove_drone_containers(client: docker.DockerClient, drone_id: str) -> None:
    containers = client.api.containers(
        all=True, quiet=True, filters={"label": f"{DRONE_LABEL}={drone_id}"}
    )
    for container in containers:
        try:
            client.api.remove_container(container["Id"], force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: the executor is removing it already
                raise


def mount_line(output: str, target: str) -> str:
    """The /proc/mounts line of ``target`` in a container's output."""
    lines = [line for line in output.splitlines() if line.split(" ")[1:2] == [target]]
    assert len(lines) == 1, output
    return lines[0]
