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
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions
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
    RecentImages,
    Runtime,
    WarmContainer,
)
from sailplane.runtime.calls import MAX_ENGINE_CALLS, EngineCalls
from sailplane.runtime.docker.mounts import to_docker_mounts
from sailplane.runtime.docker.network import DEFAULT_SUBNET, backend_network, remove_network
from sailplane.runtime.firewall import EgressPolicy
from sailplane.runtime.init_signal import signal_init
from sailplane.spec import PullPolicy, ResourceLimits
from sailplane.timing import RECONNECT_MAX_SECONDS

log = logging.getLogger(__name__)

DEFAULT_CPU_PERIOD_US = 100_000
# A started container without its port is waited for this long to see if it has exited.
EXIT_SETTLE_SECONDS = 5


WARM_PREFIX = "sailplane-warm-"
# The event stream is followed again this soon after it breaks, backing off to
# RECONNECT_MAX_SECONDS while the engine does not answer.
EVENTS_RETRY_FIRST_SECONDS = 0.1
_EXITED = re.compile(r"Exited \((-?\d+)\)")


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
        subnet: str = DEFAULT_SUBNET,
    ) -> None:
        self.drone_id = drone_id
        self.network = backend_network(egress, subnet)
        self.calls = EngineCalls("docker", max_engine_calls)
        try:
            # One pooled connection per call in flight, and one for the event stream.
            self.client = client or docker.from_env(max_pool_size=max_engine_calls + 1)
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"cannot reach the Docker engine: {exc}") from exc
        self._exits: asyncio.Queue[BackendExit] | None = None
        self._stream: Any = None
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()  # set by close(): the event stream is not followed
        self._storage_opt_supported = True
        self._images_seen = RecentImages()
        self._volumes_lock = threading.Lock()
        # Container name -> id, for the containers this runtime made or listed: a removal
        # needs the id (the address book is keyed by it), and asking the engine for it costs
        # a call that waits on the container while the engine is busy with its exit.
        self._ids: dict[str, str] = {}
        # Container name -> its init's pid on this host, as the engine gave it at the start:
        # a soft terminate signals it directly (``runtime/init_signal.py``).
        self._pids: dict[str, int] = {}

    # -- images ----------------------------------------------------------------------------

    async def prepare(self, image: str, pull_policy: PullPolicy) -> None:
        # An image seen a moment ago costs no thread: the hop alone is milliseconds on a busy
        # event loop, on the path of nearly every spawn.
        if pull_policy is PullPolicy.ALWAYS or not self._images_seen.fresh(image):
            await self.calls.thread(self._prepare, image, pull_policy)

    def _prepare(self, image: str, pull_policy: PullPolicy) -> None:
        if pull_policy is not PullPolicy.ALWAYS:
            try:
                self.client.images.get(image)
                self._images_seen.saw(image)
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
        self._images_seen.saw(image)

    # -- containers ------------------------------------------------------------------------

    async def start(self, spec: BackendSpec) -> BackendAddress:
        container_id, netns = await self.calls.thread(self._start, spec)
        return await self._connect(container_id, netns, container_name(spec.backend_id))

    async def _connect(self, container_id: str, netns: str, name: str) -> BackendAddress:
        """Wire a started container's namespace to the bridge; its address. A namespace gone
        meanwhile is a backend that exited at once."""
        try:
            async with self.calls.slot():
                ip = await self.network.attach(container_id, netns)
        except RuntimeFailure as exc:
            raise await self.calls.thread(self._unreachable, name, str(exc)) from exc
        return BackendAddress(ip, BACKEND_PORT)

    def _start(self, spec: BackendSpec) -> tuple[str, str]:
        """Create and start the container; its id and its network namespace's path."""
        self._ensure_volumes([m for m in spec.mounts if isinstance(m, ResolvedVolumeMount)])
        name = container_name(spec.backend_id)
        container_id = self._create(
            spec.image, name, {BACKEND_LABEL: spec.backend_id}, spec.env, spec.resource_limits,
            mounts=to_docker_mounts(spec.mounts), command=spec.command,
            disk=spec.resource_limits.disk_limit_bytes,
        )
        attrs = self._run_created(container_id, name)
        try:
            netns, self._pids[name] = _namespace(attrs, name)
        except RuntimeFailure as exc:
            raise self._unreachable(name, str(exc)) from exc
        return container_id, netns

    def _run_created(self, container_id: str, name: str) -> dict[str, Any]:
        """Start a created container; its inspection. One that cannot start is removed."""
        try:
            self.client.api.start(container_id)
            attrs: dict[str, Any] = self.client.api.inspect_container(container_id)
        except docker.errors.APIError as exc:
            self._remove_named(name)
            raise RuntimeFailure(f"cannot start the container: {exc.explanation}") from exc
        return attrs

    def _unreachable(self, name: str, why: str) -> RuntimeFailure:
        """A started container that could not be connected: it has already exited (its
        namespace went with its process), or, if it does not stop within a moment, it is
        broken and removed."""
        try:
            status = self.client.api.wait(name, timeout=EXIT_SETTLE_SECONDS)
        except (docker.errors.APIError, requests.exceptions.RequestException):
            self._remove_named(name)
            return RuntimeFailure(f"cannot connect the container to its network: {why}")
        return BackendExited(int(status.get("StatusCode", -1)))

    def _create(self, image: str, name: str, labels: dict[str, str], env: dict[str, str],
                limits: ResourceLimits, *, mounts: list[dict[str, Any]] | None = None,
                command: list[str] | None = None, disk: int | None = None) -> str:
        """Create a backend's container, isolated (an empty network namespace, wired after the
        start) and limited; its id. One engine call: the SDK's ``containers.create`` would
        inspect the new container too, which costs a round trip nothing here needs."""

        def create(storage_opt: dict[str, str] | None) -> str:
            host_config = self.client.api.create_host_config(
                security_opt=["no-new-privileges"], cap_drop=["ALL"],
                cap_add=list(BACKEND_CAPABILITIES), network_mode="none",
                storage_opt=storage_opt, **_limits(limits),
            )
            host_config["Mounts"] = mounts or []  # already the Engine API's entries
            created = self.client.api.create_container(
                image, name=name, command=command, detach=True, host_config=host_config,
                environment={**env, "PORT": str(BACKEND_PORT)},
                labels={**labels, DRONE_LABEL: self.drone_id},
            )
            return str(created["Id"])

        try:
            container_id = None
            if disk is not None and self._storage_opt_supported:
                try:
                    container_id = create({"size": str(disk)})
                except docker.errors.APIError as exc:
                    if "storage-opt" not in str(exc.explanation).lower():
                        raise
                    # overlay2 supports a size only on xfs with pquota; remember, go without.
                    log.warning("disk limits unsupported by this storage driver: %s",
                                exc.explanation)
                    self._storage_opt_supported = False
            if container_id is None:
                container_id = create(None)
            self._ids[name] = container_id
            return container_id
        except docker.errors.ImageNotFound as exc:
            self._images_seen.forget(image)  # removed since it was last seen
            raise RuntimeFailure(f"image {image!r} is no longer present: {exc.explanation}; "
                                 "spawn again") from exc
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot create the container: {exc.explanation}") from exc

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
        """A soft terminate is sent by the drone to the container's init itself when it
        knows that process (no engine call: a thousand at once would queue in the engine);
        a hard one, or one to a container adopted from an earlier run, through the engine."""
        name = container_name(backend_id)
        pid, container_id = self._pids.get(name), self._ids.get(name)
        if not hard and pid and container_id and await asyncio.to_thread(
                signal_init, pid, lambda cgroup: container_id in cgroup, signal.SIGTERM):
            return
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
        await self._remove_and_free(container_name(backend_id))

    async def _remove_and_free(self, name: str) -> None:
        """Remove the container and free its address."""
        container_id = await self.calls.thread(self._remove_named, name)
        if container_id is not None:
            # Its namespace went with it: only its address is left, freed in-process (no
            # engine call, so no slot held).
            await self.network.detach(container_id)

    # -- watching --------------------------------------------------------------------------

    def exits(self) -> AsyncIterator[BackendExit]:
        if self._exits is None:
            self._exits = asyncio.Queue()
            self._follow_events(asyncio.get_running_loop(), self._exits)
        return _drain(self._exits)

    def _follow_events(self, loop: asyncio.AbstractEventLoop,
                       queue: asyncio.Queue[BackendExit]) -> None:
        """Subscribe now (no exit after this call is missed), then follow the stream in a
        thread of its own for as long as the runtime lives (``_watch``)."""
        self._stream = self._subscribe()

        def report(backend_id: str, exit_code: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, BackendExit(backend_id, exit_code))

        self._watcher = threading.Thread(target=self._watch, args=(report,),
                                         name="docker-events", daemon=True)
        self._watcher.start()

    def _subscribe(self) -> Any:
        # start and rename too: they tell which backends run (a claimed warm container is
        # renamed), so one that vanishes while the stream is down is noticed.
        return self.client.events(decode=True, filters={
            "type": "container", "event": ["start", "rename", "die"],
            "label": f"{DRONE_LABEL}={self.drone_id}",
        })

    def _watch(self, report: Callable[[str, int], None]) -> None:
        """The stream ends when the engine goes away (a dockerd restart): subscribe again
        with backoff, and after every subscription list this drone's containers, reporting
        each backend whose container died or vanished while no one was listening."""
        running: set[str] = set()  # backends seen running
        delay = EVENTS_RETRY_FIRST_SECONDS
        while not self._closing.is_set():
            try:
                if self._stream is None:
                    self._stream = self._subscribe()
                    log.info("docker event stream followed again")
                if self._closing.is_set():
                    break
                self._reconcile(running, report)
                delay = EVENTS_RETRY_FIRST_SECONDS
                for event in self._stream:
                    self._on_event(event, running, report)
                reason = "it ended"
            except Exception as exc:  # the engine is gone, or went away mid-stream
                reason = f"{type(exc).__name__}: {exc}"
            if self._closing.is_set():
                break
            log.warning("docker event stream lost (%s); again in %.1f s", reason, delay)
            self._stream = None
            self._closing.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _on_event(self, event: dict[str, Any], running: set[str],
                  report: Callable[[str, int], None]) -> None:
        attributes = event.get("Actor", {}).get("Attributes", {})
        backend_id = backend_of(attributes, attributes.get("name", ""))
        if backend_id is None:
            return
        if event.get("Action") == "die":
            running.discard(backend_id)
            report(backend_id, int(attributes.get("exitCode", -1)))
        else:
            running.add(backend_id)

    def _reconcile(self, running: set[str], report: Callable[[str, int], None]) -> None:
        """Report the exit of every backend container of this drone that is not running
        (twice is harmless: the executor takes the first), and of every backend seen running
        that has no container any more (exit code -1)."""
        listed = self.client.api.containers(
            all=True, filters={"label": f"{DRONE_LABEL}={self.drone_id}"})
        present = set()
        for container in listed:
            backend_id = backend_of(container.get("Labels") or {},
                                    (container.get("Names") or [""])[0])
            if backend_id is None:
                continue
            present.add(backend_id)
            state = container.get("State")
            if state in ("running", "paused", "restarting"):
                running.add(backend_id)
            elif state in ("exited", "dead"):  # "created": a start under way, not an exit
                running.discard(backend_id)
                report(backend_id, _listed_exit_code(container.get("Status", "")))
        for backend_id in running - present:
            log.warning("backend %s: its container vanished while the event stream was down",
                        backend_id)
            running.discard(backend_id)
            report(backend_id, -1)

    async def owned(self) -> list[OwnedBackend]:
        owned = await self.calls.thread(self._owned)
        await self.network.release_stale(self._all_container_ids)  # a crash's leftovers
        return owned

    async def _all_container_ids(self) -> set[str]:
        """Every container on the engine, of any drone: they share the bridge."""
        return await self.calls.thread(self._container_ids)

    def _container_ids(self) -> set[str]:
        listed = self.client.api.containers(all=True, quiet=True)
        return {str(container["Id"]) for container in listed}

    def _owned(self) -> list[OwnedBackend]:
        # The list alone, no inspection per container: one removed meanwhile (by an operator,
        # by the watchdog) would fail an inspection, and the drone's start with it.
        listed = self.client.api.containers(
            all=True, filters={"label": f"{DRONE_LABEL}={self.drone_id}"}
        )
        addresses = {owner: ip for ip, owner in self.network.holders().items()}  # read once
        found = []
        for container in listed:
            container_id = str(container["Id"])
            name = str((container.get("Names") or ["/"])[0]).lstrip("/")
            if name:
                self._ids[name] = container_id
            backend_id = backend_of(container.get("Labels") or {}, name)
            if backend_id is None:  # a warm container nobody claimed: the pool makes new ones
                self._remove_named(name or container_id)
                continue
            running = container.get("State") == "running"
            found.append(OwnedBackend(
                backend_id=backend_id,
                running=running,
                address=(BackendAddress(addresses[container_id], BACKEND_PORT)
                         if running and container_id in addresses else None),
                exit_code=None if running else _listed_exit_code(str(container.get("Status"))),
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
        return await self._start_warm(image, limits)

    async def _start_warm(self, image: str, limits: ResourceLimits) -> WarmContainer:
        name = f"{WARM_PREFIX}{uuid.uuid4().hex[:16]}"
        container_id, netns, pid = await self.calls.thread(self._create_warm, name, image,
                                                           limits)
        try:
            address = await self._connect(container_id, netns, name)
        except RuntimeFailure as exc:
            await self.calls.thread(self._remove_named, name)
            raise RuntimeFailure(f"a warm container of {image!r} exited as it started") from exc
        return WarmContainer(name, image, address, pid)

    def _create_warm(self, name: str, image: str,
                     limits: ResourceLimits) -> tuple[str, str, int]:
        try:
            container_id = self._create(image, name, {WARM_LABEL: image}, {}, limits)
        except RuntimeFailure as exc:
            raise RuntimeFailure(f"cannot start a warm container of {image!r}: "
                                 f"{exc.message}") from exc
        try:
            netns, pid = _namespace(self._run_created(container_id, name), name)
        except RuntimeFailure:
            self._remove_named(name)
            raise
        self._pids[name] = pid
        return container_id, netns, pid

    async def claim_warm(self, warm: WarmContainer, backend_id: str) -> BackendAddress:
        name = container_name(backend_id)
        try:
            await self.calls.thread(self.client.api.rename, warm.name, name)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot claim warm container {warm.name}: {exc}") from exc
        if warm.name in self._ids:
            self._ids[name] = self._ids.pop(warm.name)
        self._pids[name] = self._pids.pop(warm.name, warm.pid)
        return warm.address

    async def discard_warm(self, warm: WarmContainer) -> None:
        await self._remove_and_free(warm.name)

    def _remove_named(self, name: str) -> str | None:
        """Remove a container by name; its id (for freeing its address), or None if there
        was none. One engine call when the id is known (``_ids``), two otherwise."""
        container_id = self._ids.get(name)
        self._pids.pop(name, None)
        try:
            if container_id is None:
                container_id = str(self.client.api.inspect_container(name)["Id"])
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            # Gone already (removed by hand, or by an earlier try whose answer was lost):
            # its address, if it held one, is still to free.
            return self._ids.pop(name, None)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise RuntimeFailure(f"cannot remove container {name}: {exc}") from exc
        self._ids.pop(name, None)
        return container_id

    async def prepare_isolation(self) -> None:
        await self.network.prepare()

    async def remove_isolation(self) -> bool:
        return await remove_network()

    async def close(self) -> None:
        self._closing.set()
        if self._stream is not None:
            self._stream.close()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 5)
        self.calls.close()
        self.client.close()


def _listed_exit_code(status: str) -> int:
    """The exit code in a container list's status (``Exited (137) 5 seconds ago``), or -1.

    >>> _listed_exit_code("Exited (137) 5 seconds ago"), _listed_exit_code("Dead")
    (137, -1)
    """
    match = _EXITED.match(status)
    return int(match.group(1)) if match else -1


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


def _namespace(attrs: dict[str, Any], name: str) -> tuple[str, int]:
    """A started container's network namespace (the engine keeps a path to it while the
    container runs) and main process, from its inspection; RuntimeFailure if it has none,
    having exited already."""
    netns = attrs.get("NetworkSettings", {}).get("SandboxKey") or ""
    state = attrs.get("State", {})
    if not netns or not state.get("Running"):
        raise RuntimeFailure(f"container {name} has no network namespace: it is not running")
    return str(netns), int(state.get("Pid", 0))


def _limits(limits: ResourceLimits) -> dict[str, Any]:
    """Plane's resource limits as ``create_host_config`` keyword arguments."""
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
