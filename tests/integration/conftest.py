"""Fixtures for tests against the real Docker engine (and the containerd it runs).

Nothing is pulled: the image is ``sailplane/static:latest`` built by ``images/build`` (DESIGN 6),
or, where that script is missing, an equivalent built here from the host's static busybox.
Every container a test starts carries the label ``dev.sailplane.test=1`` and is removed when
the test ends, whatever its outcome.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
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
from sailplane.mounts.plan import plan_mounts
from sailplane.mounts.policy import Access, HostVolume, MountPolicy
from sailplane.mounts.resolved import ResolvedMount
from sailplane.mounts.validate import TemplateValues
from sailplane.runtime.base import DRONE_LABEL
from sailplane.runtime.docker.runtime import DockerRuntime
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
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers ({exc}); start dockerd or run scripts/test")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(docker_client: docker.DockerClient) -> str:
    """``sailplane/static:latest``, built by ``images/build`` if missing; never pulled."""
    if _has_image(docker_client, IMAGE):
        return IMAGE
    build = REPO / "images" / "build"
    if os.access(build, os.X_OK) and shutil.which("docker"):
        done = subprocess.run(
            [str(build), "static"], capture_output=True, text=True,
            timeout=IMAGE_BUILD_TIMEOUT_SECONDS, check=False,
        )
        if done.returncode != 0 or not _has_image(docker_client, IMAGE):
            pytest.fail(f"images/build static failed ({done.returncode}):\n"
                        f"{done.stdout}\n{done.stderr}")
        return IMAGE
    return _build_fallback(docker_client)


def _has_image(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def _build_fallback(client: docker.DockerClient) -> str:
    """FROM scratch + the host's static busybox, as images/static does."""
    if not os.path.isfile(BUSYBOX):
        pytest.skip(f"no {BUSYBOX} to build a test image from (apt-get install busybox-static)")
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
def docker_volume_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A key whose volume name ``cache-{key}`` is unique; the volume is removed afterwards,
    together with the test's containers that still hold it."""
    key = f"t{uuid.uuid4().hex[:12]}"
    yield key
    name = f"cache-{key}"
    holders = docker_client.api.containers(
        all=True, quiet=True, filters={"volume": name, "label": "dev.sailplane.test=1"}
    )
    for holder in holders:
        docker_client.api.remove_container(holder["Id"], force=True)
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.api.remove_volume(name, force=True)


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """The roots of two host volumes an operator published: ``data`` (rw), ``config`` (ro)."""
    made = {name: tmp_path / name for name in ("data", "config")}
    for path in made.values():
        path.mkdir()
    return {name: path.resolve() for name, path in made.items()}


@pytest.fixture
def plan(roots: dict[str, Path]) -> Plan:
    """``plan(volume_mounts, key="doc-42")``: resolve like a drone, creating what is missing.

    The namespace is ``editor``, so ``{namespace}/{key}`` is ``editor/doc-42`` by default.
    """
    policy = MountPolicy.build([
        HostVolume(name="data", path=str(roots["data"]), access=Access.RW),
        HostVolume(name="config", path=str(roots["config"]), access=Access.RO),
    ])

    def resolve(volume_mounts: list[dict[str, Any]], key: str = "doc-42") -> list[ResolvedMount]:
        executor = ExecutorConfig.model_validate({"image": IMAGE, "volume_mounts": volume_mounts})
        values = TemplateValues(key=key, namespace="editor", backend="b-1")
        return plan_mounts(executor, policy, values, apply=True)

    return resolve


# -- the drone's executor on the real engine (tests/integration/test_drone_docker.py) ---------


@pytest.fixture(scope="session")
def backend_image(docker_client: docker.DockerClient) -> str:
    """``sailplane/static:latest`` as ``images/build`` makes it now, with its CGI scripts.

    The build is idempotent (a hash label), so an up-to-date image costs a second; an image
    built before ``/cgi-bin`` was added is rebuilt. Nothing is pulled.
    """
    build = REPO / "images" / "build"
    if not (os.access(build, os.X_OK) and shutil.which("docker")):
        pytest.skip("images/build or the docker CLI is missing")
    done = subprocess.run(
        [str(build), "static"], capture_output=True, text=True,
        timeout=IMAGE_BUILD_TIMEOUT_SECONDS, check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"images/build static failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return IMAGE


@dataclass
class DroneHarness:
    """One test's drone: a unique id, a store file, a mount policy, and executors over them.

    :meth:`running` gives a started :class:`Executor` on a new :class:`DockerRuntime` and a
    new :class:`DroneStore` over the same file each time, so two in a row are a drone restart.
    """

    drone_id: str
    store_path: Path
    roots: dict[str, Path]
    policy: MountPolicy
    image: str
    settings: ExecutorSettings
    volumes: list[str] = field(default_factory=list)  # named volumes to remove afterwards

    @asynccontextmanager
    async def running(self, settings: ExecutorSettings | None = None) -> AsyncIterator[Executor]:
        store = DroneStore(self.store_path)
        executor = Executor(
            DockerRuntime(self.drone_id), self.policy, store, settings or self.settings
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
    docker_client: docker.DockerClient, backend_image: str, roots: dict[str, Path],
    tmp_path: Path,
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
        image=backend_image, settings=TEST_SETTINGS,
    )
    try:
        yield harness
    finally:
        remove_drone_containers(docker_client, drone_id)
        for name in harness.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_volume(name, force=True)


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
