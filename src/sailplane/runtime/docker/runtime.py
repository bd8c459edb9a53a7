"""The Docker Engine runtime, through the ``docker`` SDK.

The SDK is blocking, so every call runs on the runtime's own pool of worker threads, at most
``MAX_ENGINE_CALLS`` at once (``runtime/calls.py``), with as many pooled connections to the
engine; exits come from one thread that follows Docker's event stream (``die`` events
filtered by this drone's label), never from polling containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import Ulimit

from sailplane.errors import BackendExited, RuntimeFailure
from sailplane.mounts.named import check_mountable, owner_of, provision, volume_labels
from sailplane.mounts.resolved import ResolvedVolumeMount
from sailplane.runtime.base import (
    BACKEND_CAPABILITIES,
    BACKEND_LABEL,
    BACKEND_PORT,
    DRONE_LABEL,
    VOLUME_LABEL,
    WARM_LABEL,
    BackendAddress,
    BackendExit,
    BackendMetrics,
    BackendSpec,
    NamedVolume,
    OwnedBackend,
    Runtime,
    WarmContainer,
)
from sailplane.runtime.calls import MAX_ENGINE_CALLS, EngineCalls
from sailplane.runtime.docker.mounts import to_docker_mounts
from sailplane.runtime.docker.network import ensure_isolated_network, remove_isolated_network
from sailplane.runtime.firewall import EgressPolicy
from sailplane.spec import PullPolicy, ResourceLimits

log = logging.getLogger(__name__)

DEFAULT_CPU_PERIOD_US = 100_000
# A started container without its port is waited for this long to see if it has exited.
EXIT_SETTLE_SECONDS = 5
_PORT_KEY = f"{BACKEND_PORT}/tcp"


WARM_PREFIX = "sailplane-warm-"


def backend_of(labels: dict[str, str], name: str) -> str | None:
    """The backend a container of this drone serves: its label, or, for a claimed warm
    container (its labels fixed before it had a backend), its name; None if unclaimed."""
    if BACKEND_LABEL in labels:
        return labels[BACKEND_LABEL]
    name = name.lstrip("/")
    if WARM_LABEL in labels and name.startswith("sailplane-") and not name.startswith(
            WARM_PREFIX):
        return name.removeprefix("sailplane-")
    return None


def container_name(backend_id: str) -> str:
    return f"sailplane-{backend_id}"


class DockerRuntime(Runtime):
    def __init__(
        self, drone_id: str, client: docker.DockerClient | None = None,
        egress: EgressPolicy | None = None, max_engine_calls: int = MAX_ENGINE_CALLS,
    ) -> None:
        self.drone_id = drone_id
        self.egress = egress or EgressPolicy()
        self._network: str | None = None  # the isolated network, once it is ensured
        self.calls = EngineCalls("docker", max_engine_calls)
        try:
            # One pooled connection per call in flight, and one for the event stream.
            self.client = client or docker.from_env(max_pool_size=max_engine_calls + 1)
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"cannot reach the Docker engine: {exc}") from exc
        self._exits: asyncio.Queue[BackendExit] | None = None
        self._stream: Any = None
        self._watcher: threading.Thread | None = None
        self._storage_opt_supported = True
        self._volumes_lock = threading.Lock()

    # -- images ----------------------------------------------------------------------------

    async def prepare(self, image: str, pull_policy: PullPolicy) -> None:
        await self.calls.thread(self._prepare, image, pull_policy)

    def _prepare(self, image: str, pull_policy: PullPolicy) -> None:
        if pull_policy is not PullPolicy.ALWAYS:
            try:
                self.client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                if pull_policy is PullPolicy.NEVER:
                    raise RuntimeFailure(
                        f"image {image!r} is not present and pull_policy is Never"
                    ) from None
            except docker.errors.APIError as exc:
                raise RuntimeFailure(f"cannot inspect image {image!r}: {exc.explanation}") from exc
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"image {image!r} could not be pulled: {exc.explanation}") from exc

    # -- containers ------------------------------------------------------------------------

    async def start(self, spec: BackendSpec) -> BackendAddress:
        return await self.calls.thread(self._start, spec)

    def _start(self, spec: BackendSpec) -> BackendAddress:
        if self._network is None:
            self._network = ensure_isolated_network(self.client, self.egress)
        self._ensure_volumes([m for m in spec.mounts if isinstance(m, ResolvedVolumeMount)])
        try:
            container = self._create(spec)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot create the container: {exc.explanation}") from exc
        try:
            container.start()
            container.reload()
        except docker.errors.APIError as exc:
            self._remove(spec.backend_id)
            raise RuntimeFailure(f"cannot start the container: {exc.explanation}") from exc
        address = _published(container)
        if address is None:
            raise self._without_port(spec.backend_id)
        return address

    def _without_port(self, backend_id: str) -> RuntimeFailure:
        """No published port after a start: the backend has already exited (the engine drops
        the port with the process), or, if it does not stop within a moment, it is broken."""
        try:
            name = container_name(backend_id)
            status = self.client.api.wait(name, timeout=EXIT_SETTLE_SECONDS)
        except (docker.errors.APIError, requests.exceptions.RequestException):
            self._remove(backend_id)
            return RuntimeFailure(
                f"cannot start the container: no port published for {_PORT_KEY}"
            )
        return BackendExited(int(status.get("StatusCode", -1)))

    def _options(self, name: str, labels: dict[str, str], env: dict[str, str],
                 limits: ResourceLimits) -> dict[str, Any]:
        """``containers.create`` arguments every backend container gets: isolated, limited,
        its port published on loopback."""
        return {
            "name": name,
            "environment": {**env, "PORT": str(BACKEND_PORT)},
            "labels": {**labels, DRONE_LABEL: self.drone_id},
            "ports": {_PORT_KEY: ("127.0.0.1", None)},
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
            "cap_add": list(BACKEND_CAPABILITIES),
            "network": self._network,
            "detach": True,
            **_limits(limits),
        }

    def _create(self, spec: BackendSpec) -> Container:
        options = self._options(container_name(spec.backend_id),
                                {BACKEND_LABEL: spec.backend_id}, spec.env, spec.resource_limits)
        options["mounts"] = to_docker_mounts(spec.mounts)
        if spec.command is not None:
            options["command"] = spec.command
        disk = spec.resource_limits.disk_limit_bytes
        if disk is not None and self._storage_opt_supported:
            try:
                return self.client.containers.create(
                    spec.image, storage_opt={"size": str(disk)}, **options
                )
            except docker.errors.APIError as exc:
                if "storage-opt" not in str(exc.explanation).lower():
                    raise
                # overlay2 supports a size only on xfs with pquota; remember and go without.
                log.warning("disk limits unsupported by this storage driver: %s", exc.explanation)
                self._storage_opt_supported = False
        return self.client.containers.create(spec.image, **options)

    def _ensure_volumes(self, mounts: list[ResolvedVolumeMount]) -> None:
        """Dynamic provisioning: create each missing named volume, labelled, on first use.

        An existing volume not created by Sailplane for the mount's namespace, or one volume
        more than the namespace's cap, raises MountRefused. Every check runs before the first
        create, so a refused start creates nothing."""
        if not mounts:
            return
        with self._volumes_lock:  # one count and create at a time, for the cap
            missing: dict[str, ResolvedVolumeMount] = {}
            for mount in mounts:
                labels = self._volume_labels(mount.name)
                if labels is None:
                    missing.setdefault(mount.name, mount)
                else:
                    check_mountable(mount.name, labels, mount.namespace, mount.mount)
            provision(list(missing.values()), self._namespace_counts, self._create_volume,
                      self._undo_volume)

    def _namespace_counts(self) -> Counter[str]:
        return Counter(volume.namespace for volume in self._volumes())

    def _undo_volume(self, name: str) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self.client.api.remove_volume(name)

    def _volume_labels(self, name: str) -> dict[str, str] | None:
        """An existing volume's labels ({} for none), or None if there is no such volume."""
        try:
            volume = self.client.volumes.get(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot inspect volume {name!r}: {exc.explanation}") from exc
        labels: dict[str, str] = volume.attrs.get("Labels") or {}
        return labels

    def _create_volume(self, mount: ResolvedVolumeMount) -> None:
        try:
            volume = self.client.volumes.create(
                mount.name, labels=volume_labels(mount.namespace, mount.requested)
            )
        except docker.errors.APIError as exc:
            raise RuntimeFailure(
                f"cannot create volume {mount.name!r}: {exc.explanation}"
            ) from exc
        # The engine returns a volume of that name made meanwhile by anyone, with its labels.
        check_mountable(mount.name, volume.attrs.get("Labels"), mount.namespace, mount.mount)

    async def volumes(self) -> list[NamedVolume]:
        return await self.calls.thread(self._volumes)

    def _volumes(self) -> list[NamedVolume]:
        try:
            listed = self.client.volumes.list(filters={"label": VOLUME_LABEL})
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot list volumes: {exc.explanation}") from exc
        found = []
        for volume in listed:
            owner = owner_of(volume.name, volume.attrs.get("Labels"))
            if owner is not None:
                found.append(NamedVolume(volume.name, owner.namespace, owner.name,
                                         _timestamp(volume.attrs.get("CreatedAt"))))
        return found

    async def remove_volume(self, name: str) -> None:
        await self.calls.thread(self._remove_volume, name)

    def _remove_volume(self, name: str) -> None:
        labels = self._volume_labels(name)
        if labels is None:
            raise RuntimeFailure(f"there is no volume {name!r}")
        if owner_of(name, labels) is None:
            raise RuntimeFailure(f"volume {name!r} was not created by Sailplane; refused")
        try:
            self.client.api.remove_volume(name)
        except docker.errors.NotFound:
            raise RuntimeFailure(f"there is no volume {name!r}") from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                users = self.client.api.containers(all=True, filters={"volume": name})
                names = ", ".join(sorted(c["Names"][0].lstrip("/") for c in users)) or "?"
                raise RuntimeFailure(
                    f"volume {name!r} is in use by container(s) {names} (running or stopped); "
                    "remove them first"
                ) from exc
            raise RuntimeFailure(f"cannot remove volume {name!r}: {exc.explanation}") from exc

    async def signal(self, backend_id: str, hard: bool) -> None:
        await self.calls.thread(self._signal, backend_id, "SIGKILL" if hard else "SIGTERM")

    def _signal(self, backend_id: str, signal: str) -> None:
        try:
            self.client.api.kill(container_name(backend_id), signal=signal)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: not running, its exit is already reported
                raise RuntimeFailure(f"cannot signal backend {backend_id}: {exc}") from exc

    async def remove(self, backend_id: str) -> None:
        await self.calls.thread(self._remove, backend_id)

    def _remove(self, backend_id: str) -> None:
        try:
            self.client.api.remove_container(container_name(backend_id), force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise RuntimeFailure(f"cannot remove backend {backend_id}: {exc}") from exc

    # -- watching --------------------------------------------------------------------------

    def exits(self) -> AsyncIterator[BackendExit]:
        if self._exits is None:
            self._exits = asyncio.Queue()
            self._follow_events(asyncio.get_running_loop(), self._exits)
        return _drain(self._exits)

    def _follow_events(self, loop: asyncio.AbstractEventLoop,
                       queue: asyncio.Queue[BackendExit]) -> None:
        self._stream = self.client.events(decode=True, filters={
            "type": "container", "event": "die", "label": f"{DRONE_LABEL}={self.drone_id}",
        })

        def follow() -> None:
            try:
                for event in self._stream:
                    attributes = event.get("Actor", {}).get("Attributes", {})
                    backend_id = backend_of(attributes, attributes.get("name", ""))
                    if backend_id:
                        exit_ = BackendExit(backend_id, int(attributes.get("exitCode", -1)))
                        loop.call_soon_threadsafe(queue.put_nowait, exit_)
            except Exception:  # the stream ends with an error when closed
                log.debug("docker event stream ended", exc_info=True)

        self._watcher = threading.Thread(target=follow, name="docker-events", daemon=True)
        self._watcher.start()

    async def owned(self) -> list[OwnedBackend]:
        return await self.calls.thread(self._owned)

    def _owned(self) -> list[OwnedBackend]:
        containers = self.client.containers.list(
            all=True, filters={"label": f"{DRONE_LABEL}={self.drone_id}"}
        )
        found = []
        for container in containers:
            backend_id = backend_of(container.labels, container.name or "")
            if backend_id is None:  # a warm container nobody claimed: the pool makes new ones
                self._remove_named(container.name or container.id or "")
                continue
            running = container.status == "running"
            state = container.attrs.get("State", {})
            found.append(OwnedBackend(
                backend_id=backend_id,
                running=running,
                address=_published(container) if running else None,
                exit_code=None if running else int(state.get("ExitCode", -1)),
            ))
        return found

    async def metrics(self, backend_id: str) -> BackendMetrics:
        return await self.calls.thread(self._metrics, backend_id)

    def _metrics(self, backend_id: str) -> BackendMetrics:
        try:
            stats = self.client.api.stats(container_name(backend_id), stream=False)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"no metrics for backend {backend_id}: {exc}") from exc
        memory = int(stats.get("memory_stats", {}).get("usage", 0))
        cpu_ns = int(stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0))
        return BackendMetrics(memory_bytes=memory, cpu_seconds=cpu_ns / 1e9)

    async def init_pid(self, backend_id: str) -> int | None:
        return await self.calls.thread(self._init_pid, backend_id)

    def _init_pid(self, backend_id: str) -> int:
        try:
            state = self.client.api.inspect_container(container_name(backend_id))["State"]
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot inspect backend {backend_id}: {exc}") from exc
        if not state.get("Running") or not state.get("Pid"):
            raise RuntimeFailure(f"the container of backend {backend_id} is not running")
        return int(state["Pid"])

    # -- warm containers (drone/warm_pool.py) -----------------------------------------------

    async def start_warm(self, image: str, limits: ResourceLimits) -> WarmContainer:
        return await self.calls.thread(self._start_warm, image, limits)

    def _start_warm(self, image: str, limits: ResourceLimits) -> WarmContainer:
        if self._network is None:
            self._network = ensure_isolated_network(self.client, self.egress)
        name = f"{WARM_PREFIX}{uuid.uuid4().hex[:16]}"
        try:
            container = self.client.containers.create(
                image, **self._options(name, {WARM_LABEL: image}, {}, limits))
            container.start()
            container.reload()
        except docker.errors.APIError as exc:
            self._remove_named(name)
            raise RuntimeFailure(f"cannot start a warm container of {image!r}: "
                                 f"{exc.explanation}") from exc
        address = _published(container)
        if address is None:
            self._remove_named(name)
            raise RuntimeFailure(f"a warm container of {image!r} exited as it started")
        return WarmContainer(name, image, address, int(container.attrs["State"]["Pid"]))

    async def claim_warm(self, warm: WarmContainer, backend_id: str) -> BackendAddress:
        try:
            await self.calls.thread(self.client.api.rename, warm.name, container_name(backend_id))
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot claim warm container {warm.name}: {exc}") from exc
        return warm.address

    async def discard_warm(self, warm: WarmContainer) -> None:
        await self.calls.thread(self._remove_named, warm.name)

    def _remove_named(self, name: str) -> None:
        try:
            self.client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise RuntimeFailure(f"cannot remove container {name}: {exc}") from exc

    async def remove_isolation(self) -> bool:
        return await self.calls.thread(remove_isolated_network, self.client)

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 5)
        self.calls.close()
        self.client.close()


async def _drain(queue: asyncio.Queue[BackendExit]) -> AsyncIterator[BackendExit]:
    while True:
        yield await queue.get()


def _timestamp(text: object) -> datetime | None:
    """The engine's ``CreatedAt`` (RFC 3339), or None if absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _published(container: Container) -> BackendAddress | None:
    """The loopback address of the backend's port, or None (a container we did not start)."""
    ports = container.attrs["NetworkSettings"].get("Ports") or {}
    for binding in ports.get(_PORT_KEY) or []:
        if binding.get("HostIp") in ("127.0.0.1", "0.0.0.0", ""):
            return BackendAddress("127.0.0.1", int(binding["HostPort"]))
    return None


def _limits(limits: ResourceLimits) -> dict[str, Any]:
    """Plane's resource limits as ``containers.create`` keyword arguments."""
    options: dict[str, Any] = {}
    if limits.memory_limit_bytes is not None:
        options["mem_limit"] = limits.memory_limit_bytes
    if limits.cpu_period_percent is not None:
        period = limits.cpu_period or DEFAULT_CPU_PERIOD_US
        options["cpu_period"] = period
        options["cpu_quota"] = period * limits.cpu_period_percent // 100
    if limits.cpu_time_limit is not None:
        seconds = limits.cpu_time_limit
        options["ulimits"] = [Ulimit(name="cpu", soft=seconds, hard=seconds)]
    if limits.pids_limit is not None:
        options["pids_limit"] = limits.pids_limit
    return options
