"""The containerd runtime, through ``ctr`` in a namespace of its own (docs/runtimes.md).

- Images come from the namespace's image store; one missing there is imported from the local
  Docker engine if it has it (``images.py``), and pulled only if neither has it and the pull
  policy says so.
- Every ``ctr`` call (and every backend's network set-up) holds one of ``MAX_ENGINE_CALLS``
  slots (``runtime/calls.py``), so stopping a thousand backends never runs a thousand ``ctr``
  processes at once.
- A backend is one ``ctr run --detach`` in a network namespace of its own on Sailplane's own
  bridge (``network.py``), firewalled like Docker's backends, with only the capabilities of
  ``BACKEND_CAPABILITIES``; the namespace is taken from a few made ahead of time
  (``netns_pool.py``). It listens on ``PORT`` (8080) at its own address, where the drone
  reaches it. The address, the namespace, the backend id and the drone id are container
  labels, so a restarted drone finds and adopts its own.
- Mounts are the OCI mounts of docs/mounts.md as ``--mount`` flags; a named volume is a directory
  ``{state_dir}/volumes/{name}`` (mode 0750, ``name`` its namespaced runtime name), made on
  first use and kept, its labels recorded in ``{state_dir}/volumes/.labels/{name}.json``.
- Exits come from one ``ctr events`` process filtered to ``/tasks/exit`` in the namespace, never
  from polling. Watching counts as started once an event we cause ourselves (a namespace label)
  has come back through that stream, and :meth:`start`/:meth:`owned` wait for that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from signal import Signals
from typing import Any
from urllib.parse import quote

from sailplane.errors import RuntimeFailure
from sailplane.mounts.named import check_mountable, owner_of, provision, volume_labels
from sailplane.mounts.resolved import ResolvedVolumeMount
from sailplane.runtime.base import (
    BACKEND_CAPABILITIES,
    BACKEND_LABEL,
    BACKEND_PORT,
    DRONE_LABEL,
    BackendAddress,
    BackendExit,
    BackendMetrics,
    BackendSpec,
    NamedVolume,
    OwnedBackend,
    RecentImages,
    Runtime,
)
from sailplane.runtime.calls import MAX_ENGINE_CALLS, EngineCalls
from sailplane.runtime.containerd.batch import Batcher
from sailplane.runtime.containerd.cgroup import (
    MIN_PIDS_LIMIT,
    prepare_pids_cgroup,
    remove_pids_cgroup,
)
from sailplane.runtime.containerd.ctr import (
    DEFAULT_NAMESPACE,
    Ctr,
    CtrError,
    normalize_image,
    task_pids,
    task_statuses,
)
from sailplane.runtime.containerd.images import DockerImages, import_command
from sailplane.runtime.containerd.mounts import to_ctr_mount_flag, to_oci_mounts
from sailplane.runtime.containerd.netns_pool import DEFAULT_POOL_SIZE, NetnsPool
from sailplane.runtime.containerd.network import DEFAULT_SUBNET, NamespaceNetwork, remove_network
from sailplane.runtime.containerd.signals import signal_init
from sailplane.runtime.firewall import EgressPolicy
from sailplane.spec import PullPolicy, ResourceLimits

log = logging.getLogger(__name__)

ADDRESS_LABEL = "dev.sailplane.address"
# The network namespace the backend holds; without it (older backends), one named like the
# container.
NETNS_LABEL = "dev.sailplane.netns"
# Every capability Linux has (capability.h); ctr can only drop them by name.
ALL_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
_CAPABILITY_FLAGS = [flag for name in ALL_CAPABILITIES if name not in BACKEND_CAPABILITIES
                     for flag in ("--cap-drop", f"CAP_{name}")]
EXIT_CODE_LABEL = "dev.sailplane.exit-code"  # recorded when the drone reaps a task itself
WATCH_LABEL_PREFIX = "dev.sailplane.watch."  # a namespace label, set to see the stream live
DEFAULT_CPU_PERIOD_US = 100_000
# Docker's minimum, so a spec is refused the same way by both runtimes.
MIN_MEMORY_LIMIT_BYTES = 6 * 1024 * 1024
VOLUME_MODE = 0o750
PULL_TIMEOUT_SECONDS = 300.0
SUBSCRIBE_TIMEOUT_SECONDS = 15.0
PROBE_INTERVAL_SECONDS = 0.2
RESUBSCRIBE_DELAY_SECONDS = 1.0
_RUNNING = frozenset({"RUNNING", "PAUSED", "PAUSING"})
_EVENT = re.compile(r" (?P<topic>/\S+) (?P<body>\{.*\})\s*$")
_REAPED_CODE = re.compile(r"exit with non-zero exit code (\d+)")


def container_id(backend_id: str) -> str:
    return f"sailplane-{backend_id}"


class ContainerdRuntime(Runtime):
    def __init__(
        self, drone_id: str, state_dir: Path, address: str, namespace: str = DEFAULT_NAMESPACE,
        subnet: str = DEFAULT_SUBNET, egress: EgressPolicy | None = None,
        max_engine_calls: int = MAX_ENGINE_CALLS, docker_images: DockerImages | None = None,
        netns_pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.drone_id = drone_id
        self.ctr = Ctr(address, namespace)
        self.calls = EngineCalls("containerd", max_engine_calls)  # ctr processes at once
        # Removals that arrive together (a terminate-all) go to ctr in batches: batch.py.
        self._deletes = Batcher(lambda ids: self.ctr.each("containers", "delete", ids=ids),
                                self.calls.slot)
        self._force_deletes = Batcher(
            lambda ids: self.ctr.each("tasks", "delete", "--force", ids=ids), self.calls.slot)
        self.docker_images = docker_images or DockerImages()
        self.volume_root = state_dir / "volumes"
        self.log_dir = state_dir / "logs"
        self._backends: dict[str, str] = {}  # container id -> backend id, of this drone
        self.network = NamespaceNetwork(subnet, egress or EgressPolicy())
        self.netns = NetnsPool(self.network, drone_id, netns_pool_size, self.calls.slot)
        self._netns: dict[str, str] = {}  # container id -> the namespace it holds
        self._images_seen = RecentImages()
        self._exits: asyncio.Queue[BackendExit] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._warned_disk = False
        self._runs: set[asyncio.Future[str]] = set()  # `ctr run`s under way
        self._volumes_lock = threading.Lock()

    async def _ctr(self, *args: str) -> str:
        """One ``ctr`` call, holding one of the runtime's engine-call slots."""
        async with self.calls.slot():
            return await self.ctr(*args)

    # -- images ----------------------------------------------------------------------------

    async def prepare(self, image: str, pull_policy: PullPolicy) -> None:
        """containerd's store, else the local Docker engine's (imported, once per image even
        under concurrent spawns), else a registry if the pull policy allows one."""
        ref = normalize_image(image)
        if pull_policy is not PullPolicy.ALWAYS:
            if await self._has_image(ref):
                return
            if await self.docker_images.size(image) is not None:
                await self.docker_images.import_once(image, self.ctr, self.calls.slot)
                if not await self._has_image(ref, cached=False):
                    raise RuntimeFailure(
                        f"image {image!r} was imported from the local Docker engine but "
                        f"containerd does not list it as {ref!r}"
                    )
                return
            if pull_policy is PullPolicy.NEVER:
                raise RuntimeFailure(self._missing(image, ref, "pull_policy is Never"))
        try:
            async with self.calls.slot():
                await self.ctr("images", "pull", ref, timeout=PULL_TIMEOUT_SECONDS)
        except CtrError as exc:
            raise RuntimeFailure(self._missing(
                image, ref, f"a pull failed: {exc.message}")) from exc
        self._images_seen.saw(ref)

    def _missing(self, image: str, ref: str, why: str) -> str:
        docker = ("nor in the local Docker engine's" if self.docker_images.available()
                  else "and there is no docker CLI to look in Docker's")
        return (
            f"image {image!r} is not in containerd's store (namespace {self.ctr.namespace!r} "
            f"at {self.ctr.address}, as {ref!r}) {docker}, and {why}; build it into Docker "
            f"(images/build) and spawn again, or import it: {import_command(image, self.ctr)}"
        )

    async def _has_image(self, ref: str, cached: bool = True) -> bool:
        if cached and self._images_seen.fresh(ref):
            return True
        try:
            async with self.calls.slot():
                listed = await self.ctr("images", "ls", "-q", f"name=={ref}")
        except CtrError as exc:
            raise RuntimeFailure(f"cannot inspect image {ref!r}: {exc.message}") from exc
        if ref not in listed.split():
            return False
        self._images_seen.saw(ref)
        return True

    # -- containers ------------------------------------------------------------------------

    async def start(self, spec: BackendSpec) -> BackendAddress:
        await self._watching()
        limits = self._limit_flags(spec.resource_limits)
        try:
            mounts = [
                flag for mount in to_oci_mounts(spec.mounts, str(self.volume_root))
                for flag in ("--mount", to_ctr_mount_flag(mount))
            ]
        except ValueError as exc:
            raise RuntimeFailure(f"cannot mount: {exc}") from exc
        await asyncio.to_thread(
            self._ensure_volumes, [m for m in spec.mounts if isinstance(m, ResolvedVolumeMount)]
        )
        await asyncio.to_thread(self.log_dir.mkdir, mode=0o750, parents=True, exist_ok=True)
        cid = container_id(spec.backend_id)
        if spec.resource_limits.pids_limit is not None:  # ctr has no flag: a cgroup made first
            limits += ["--cgroup", await asyncio.to_thread(
                prepare_pids_cgroup, self.ctr.namespace, cid, spec.resource_limits.pids_limit
            )]
        self._backends[cid] = spec.backend_id
        try:
            wired = await self.netns.take()
        except RuntimeFailure:
            await self.remove(spec.backend_id)
            raise
        self._netns[cid] = wired.name  # from here on, the backend's removal deletes it
        ip = wired.address
        env = {**spec.env, "PORT": str(BACKEND_PORT)}
        args = [
            "run", "--detach", "--seccomp",
            "--with-ns", f"network:{self.network.netns_path(wired.name)}", *_CAPABILITY_FLAGS,
            "--log-uri", f"file://{quote(str(self._log_path(cid)))}",
            "--label", f"{BACKEND_LABEL}={spec.backend_id}",
            "--label", f"{DRONE_LABEL}={self.drone_id}",
            "--label", f"{ADDRESS_LABEL}={ip}", "--label", f"{NETNS_LABEL}={wired.name}",
            *(flag for name, value in env.items() for flag in ("--env", f"{name}={value}")),
            *mounts, *limits, normalize_image(spec.image), cid, *(spec.command or []),
        ]
        # Shielded: a backend that exits at once is reported (and this call cancelled by the
        # executor) before ctr returns; ctr is then left to finish rather than killed half-way,
        # and the container is the executor's to remove like that of any exited backend.
        run = asyncio.ensure_future(self._ctr(*args))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        try:
            await asyncio.shield(run)
        except CtrError as exc:
            await self.remove(spec.backend_id)  # whatever ctr made before it failed
            raise RuntimeFailure(f"cannot start the container: {exc.message}") from exc
        return BackendAddress(ip, BACKEND_PORT)

    def _limit_flags(self, limits: ResourceLimits) -> list[str]:
        if limits.cpu_time_limit is not None:
            raise RuntimeFailure(
                "the containerd runtime cannot apply cpu_time_limit (ctr run has no flag for "
                "it); use the docker runtime for such backends"
            )
        if limits.pids_limit is not None and limits.pids_limit < MIN_PIDS_LIMIT:
            raise RuntimeFailure(
                f"pids_limit {limits.pids_limit}: the containerd runtime needs at least "
                f"{MIN_PIDS_LIMIT} (the container's start-up runs under it)"
            )
        flags: list[str] = []
        memory = limits.memory_limit_bytes
        if memory is not None:
            if memory < MIN_MEMORY_LIMIT_BYTES:
                raise RuntimeFailure(
                    f"memory_limit_bytes {memory}: the minimum memory limit allowed is 6MB"
                )
            flags += ["--memory-limit", str(memory)]
        if limits.cpu_period_percent is not None:
            period = limits.cpu_period or DEFAULT_CPU_PERIOD_US
            quota = period * limits.cpu_period_percent // 100
            flags += ["--cpu-period", str(period), "--cpu-quota", str(quota)]
        if limits.disk_limit_bytes is not None and not self._warned_disk:
            # As Docker's overlay2 off xfs: the snapshotter has no size; say so once.
            log.warning("disk limits are not supported by the containerd runtime; ignored")
            self._warned_disk = True
        return flags

    def _ensure_volumes(self, mounts: list[ResolvedVolumeMount]) -> None:
        """Dynamic provisioning: ``{volume_root}/{name}``, mode 0750, recorded on first use.

        An existing directory without a record saying Sailplane made it for the mount's
        namespace, or one volume more than the namespace's cap, raises MountRefused. Every
        check runs before the first directory is made, so a refused start creates nothing.
        Runtime names (``mounts.named``) are one path component that never starts with a dot,
        so never the hidden ``.labels`` record directory."""
        if not mounts:
            return
        with self._volumes_lock:  # one count and create at a time, for the cap
            missing: dict[str, ResolvedVolumeMount] = {}
            for mount in mounts:
                path = self.volume_root / mount.name
                if not os.path.lexists(path):
                    missing.setdefault(mount.name, mount)
                    continue
                check_mountable(mount.name, self.volume_labels(mount.name), mount.namespace,
                                mount.mount)
                if path.is_symlink() or not path.is_dir():
                    raise RuntimeFailure(f"volume {mount.name!r} exists but is not a directory")
            provision(list(missing.values()), self._namespace_counts, self._create_volume,
                      self._undo_volume)

    def _namespace_counts(self) -> Counter[str]:
        return Counter(volume.namespace for volume in self._volumes())

    def _undo_volume(self, name: str) -> None:
        with contextlib.suppress(RuntimeFailure):
            self._delete_volume(name)

    def _create_volume(self, mount: ResolvedVolumeMount) -> None:
        """The record first, then the directory: a directory never exists without one."""
        record = {**volume_labels(mount.namespace, mount.requested), DRONE_LABEL: self.drone_id,
                  "created_ms": int(time.time() * 1000)}
        try:
            self._labels_dir.mkdir(mode=VOLUME_MODE, parents=True, exist_ok=True)
            written = self._labels_dir / f".{mount.name}.json.new"
            written.write_text(json.dumps(record) + "\n")
            written.replace(self._record_path(mount.name))
            path = self.volume_root / mount.name
            path.mkdir(mode=VOLUME_MODE)
            path.chmod(VOLUME_MODE)  # whatever the umask
        except OSError as exc:
            self._record_path(mount.name).unlink(missing_ok=True)
            raise RuntimeFailure(f"cannot create volume {mount.name!r}: {exc.strerror}") from exc

    @property
    def _labels_dir(self) -> Path:
        return self.volume_root / ".labels"

    def _record_path(self, name: str) -> Path:
        return self._labels_dir / f"{name}.json"

    def volume_labels(self, name: str) -> dict[str, Any] | None:
        """The record of a named volume this runtime provisioned, or None."""
        try:
            record: dict[str, Any] = json.loads(self._record_path(name).read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: not a record of ours
            return {}
        return record if isinstance(record, dict) else {}

    async def volumes(self) -> list[NamedVolume]:
        return await asyncio.to_thread(self._volumes)

    def _volumes(self) -> list[NamedVolume]:
        try:
            entries = sorted(self.volume_root.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for path in entries:
            if path.name.startswith(".") or path.is_symlink() or not path.is_dir():
                continue
            record = self.volume_labels(path.name)
            owner = owner_of(path.name, record)
            if owner is None or record is None:
                continue
            created_ms = record.get("created_ms")
            created_at = (datetime.fromtimestamp(created_ms / 1000, UTC)
                          if isinstance(created_ms, int) else None)
            found.append(NamedVolume(path.name, owner.namespace, owner.name, created_at))
        return found

    async def remove_volume(self, name: str) -> None:
        """Refused for a volume without our record, and while a container of this runtime's
        containerd namespace still binds its directory (running or not)."""
        path = self.volume_root / name
        if "/" in name or name.startswith(".") or not os.path.lexists(path):
            raise RuntimeFailure(f"there is no volume {name!r}")
        if owner_of(name, self.volume_labels(name)) is None:
            raise RuntimeFailure(f"volume {name!r} was not created by Sailplane; refused")
        users = await self._containers_binding(str(path))
        if users:
            raise RuntimeFailure(
                f"volume {name!r} is in use by container(s) {', '.join(users)} (running or "
                "stopped); remove them first"
            )
        await asyncio.to_thread(self._delete_volume, name)

    async def _containers_binding(self, source: str) -> list[str]:
        try:
            cids = (await self._ctr("containers", "ls", "-q")).split()
        except CtrError as exc:
            raise RuntimeFailure(f"cannot list containers: {exc.message}") from exc
        users = []
        for cid in cids:
            try:
                spec = json.loads(await self._ctr("containers", "info", "--spec", cid))
            except CtrError as exc:
                if exc.not_found:  # removed since it was listed
                    continue
                raise RuntimeFailure(f"cannot inspect container {cid}: {exc.message}") from exc
            if any(mount.get("source") == source for mount in spec.get("mounts") or []):
                users.append(cid)
        return users

    def _delete_volume(self, name: str) -> None:
        """The directory first, then its record: a failure half-way leaves a volume that is
        still ours, to remove again."""
        try:
            shutil.rmtree(self.volume_root / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise RuntimeFailure(f"cannot remove volume {name!r}: {exc.strerror}") from exc
        self._record_path(name).unlink(missing_ok=True)

    def _log_path(self, cid: str) -> Path:
        return self.log_dir / f"{cid}.log"

    async def signal(self, backend_id: str, hard: bool) -> None:
        """Sent to the container's init by the drone itself (``signals.py``: no process per
        backend), or by ``ctr tasks kill`` when the drone cannot find that init."""
        cid = container_id(backend_id)
        signal = Signals.SIGKILL if hard else Signals.SIGTERM
        if await asyncio.to_thread(signal_init, self.ctr.namespace, cid, signal):
            return
        try:
            await self._ctr("tasks", "kill", "--signal", signal.name, cid)
        except CtrError as exc:
            if not (exc.not_found or "already finished" in exc.message):
                raise RuntimeFailure(f"cannot signal backend {backend_id}: {exc.message}") \
                    from exc

    async def remove(self, backend_id: str) -> None:
        """Delete the container, its stopped task and its snapshot (``ctr containers delete``
        does all three, for the containers of many removals at once: ``batch.py``; a task
        still running is force-deleted first), then its network namespace, its log and its
        cgroup."""
        cid = container_id(backend_id)
        try:
            await self._deletes.submit(cid)
        except CtrError as exc:
            if not exc.not_found:  # a task still running (or created): kill it, then again
                await self._remove_running(backend_id, cid)
        # Known from the start or the adoption; else the container's, if it had one of old.
        await self.netns.release(self._netns.get(cid, cid))
        self._netns.pop(cid, None)
        self._backends.pop(cid, None)
        self._log_path(cid).unlink(missing_ok=True)
        await asyncio.to_thread(remove_pids_cgroup, self.ctr.namespace, cid)

    async def _remove_running(self, backend_id: str, cid: str) -> None:
        for batcher in (self._force_deletes, self._deletes):
            try:
                await batcher.submit(cid)
            except CtrError as exc:
                if not exc.not_found:
                    raise RuntimeFailure(
                        f"cannot remove backend {backend_id}: {exc.message}"
                    ) from exc

    # -- watching --------------------------------------------------------------------------

    def exits(self) -> AsyncIterator[BackendExit]:
        if self._exits is None:
            self._exits = asyncio.Queue()
            self._watcher = asyncio.create_task(self._watch(self._exits))
        return _drain(self._exits)

    async def _watching(self) -> None:
        """Once :meth:`exits` was called, wait until its stream is live."""
        if self._watcher is None or self._subscribed.is_set():
            return
        subscribed = asyncio.create_task(self._subscribed.wait())
        try:
            await asyncio.wait({subscribed, self._watcher}, timeout=SUBSCRIBE_TIMEOUT_SECONDS,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            subscribed.cancel()
        if not self._subscribed.is_set():
            raise RuntimeFailure(f"containerd at {self.ctr.address} sends no events")

    async def _watch(self, queue: asyncio.Queue[BackendExit]) -> None:
        """Follow the event stream for as long as the runtime lives; after a break, follow
        it again and report the exits that happened meanwhile."""
        first = True
        while True:
            try:
                await self._follow(queue, reconcile=not first)
            except (OSError, CtrError, RuntimeFailure) as exc:
                log.warning("containerd event stream failed: %s", exc)
            except Exception:  # anything else must not end the watching either
                log.exception("containerd event stream failed")
            first = False
            await asyncio.sleep(RESUBSCRIBE_DELAY_SECONDS)

    async def _follow(self, queue: asyncio.Queue[BackendExit], reconcile: bool) -> None:
        namespace = json.dumps(self.ctr.namespace)
        process = await asyncio.create_subprocess_exec(
            *self.ctr.argv("events", f'topic=="/tasks/exit",namespace=={namespace}',
                           f'topic=="/namespaces/update",namespace=={namespace}'),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdout is not None
        key, token = f"{WATCH_LABEL_PREFIX}{self.drone_id}", uuid.uuid4().hex
        probe = asyncio.create_task(self._probe(key, token))
        live = False
        try:
            async for line in process.stdout:
                event = _parse_event(line.decode(errors="replace"))
                if event is None:
                    continue
                topic, body = event
                if topic == "/namespaces/update":
                    if not live and str(body.get("labels", {}).get(key, "")).startswith(token):
                        live = True
                        probe.cancel()
                        self._subscribed.set()
                        with contextlib.suppress(CtrError):
                            await self.ctr("namespaces", "label", self.ctr.namespace, f"{key}=")
                        if reconcile:
                            await self._reconcile(queue)
                elif body.get("id") == body.get("container_id"):  # not an exec'd process
                    await self._report(queue, str(body["container_id"]),
                                       int(body.get("exit_status", 0)))
        finally:
            probe.cancel()
            if process.returncode is None:
                process.kill()
            await process.wait()
        log.warning("containerd event stream ended (%s)", process.returncode)

    async def _probe(self, key: str, token: str) -> None:
        """Set a namespace label until its update event comes back through the stream."""
        for attempt in range(int(SUBSCRIBE_TIMEOUT_SECONDS / PROBE_INTERVAL_SECONDS)):
            with contextlib.suppress(CtrError):
                await self.ctr("namespaces", "label", self.ctr.namespace,
                               f"{key}={token}-{attempt}")
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    async def _report(self, queue: asyncio.Queue[BackendExit], cid: str, code: int) -> None:
        backend_id = self._backends.get(cid)
        if backend_id is None:  # e.g. exited while a restarted drone had not listed it yet
            labels = await self._labels(cid)
            if labels is None or labels.get(DRONE_LABEL) != self.drone_id:
                return
            backend_id = labels.get(BACKEND_LABEL)
            if not backend_id:
                return
        queue.put_nowait(BackendExit(backend_id, code))

    async def _reconcile(self, queue: asyncio.Queue[BackendExit]) -> None:
        """After a break in the stream: report the tasks of ours that stopped meanwhile."""
        tasks = await self._tasks()
        for cid, backend_id in list(self._backends.items()):
            status = tasks.get(cid)
            if status not in _RUNNING:
                code = await self._exit_code(cid, status, await self._labels(cid) or {})
                queue.put_nowait(BackendExit(backend_id, code))

    async def owned(self) -> list[OwnedBackend]:
        await self._watching()
        value = json.dumps(self.drone_id)
        try:
            listed = await self._ctr("containers", "ls", "-q", f'labels."{DRONE_LABEL}"=={value}')
            tasks = await self._tasks()
        except CtrError as exc:
            raise RuntimeFailure(f"cannot list containers: {exc.message}") from exc
        cids = listed.split()
        found = []
        in_use = set()
        for cid, labels in zip(cids, await asyncio.gather(*map(self._labels, cids)),
                               strict=True):
            if labels is not None and NETNS_LABEL in labels:
                in_use.add(labels[NETNS_LABEL])
                self._netns[cid] = labels[NETNS_LABEL]
            backend_id = (labels or {}).get(BACKEND_LABEL)
            if labels is None or not backend_id:
                continue
            self._backends[cid] = backend_id
            status = tasks.get(cid)
            running = status in _RUNNING
            ip = labels.get(ADDRESS_LABEL)
            address = BackendAddress(ip, BACKEND_PORT) if running and ip else None
            found.append(OwnedBackend(
                backend_id=backend_id, running=running, address=address,
                exit_code=None if running else await self._exit_code(cid, status, labels),
            ))
        # What no container of ours names is an earlier run's leftover; a start of this run
        # under way meanwhile holds a namespace the pool made, which it never sweeps.
        await self.netns.sweep(in_use)
        self.netns.start()
        return found

    async def _tasks(self) -> dict[str, str]:
        """Container id -> task status (RUNNING, STOPPED, ...), for every task there is."""
        return task_statuses(await self._ctr("tasks", "ls"))

    async def init_pid(self, backend_id: str) -> int | None:
        try:
            listing = await self._ctr("tasks", "ls")
        except CtrError as exc:
            raise RuntimeFailure(f"cannot list containerd's tasks: {exc.message}") from exc
        cid = container_id(backend_id)
        pid = task_pids(listing).get(cid)
        if task_statuses(listing).get(cid) not in _RUNNING or not pid:
            raise RuntimeFailure(f"the container of backend {backend_id} is not running")
        return pid

    async def _labels(self, cid: str) -> dict[str, str] | None:
        try:
            info = json.loads(await self._ctr("containers", "info", cid))
        except CtrError as exc:
            if exc.not_found:
                return None
            raise RuntimeFailure(f"cannot inspect container {cid}: {exc.message}") from exc
        labels: dict[str, str] = info.get("Labels") or {}
        return labels

    async def _exit_code(self, cid: str, status: str | None, labels: dict[str, str]) -> int:
        """A stopped task's exit code: reaping it (``tasks delete``) is the only way ctr
        tells; the code is then kept as a container label for a later look."""
        if status != "STOPPED":
            recorded = labels.get(EXIT_CODE_LABEL, "")
            return int(recorded) if recorded.isdigit() else -1
        try:
            async with self.calls.slot():
                _, stderr = await self.ctr.output("tasks", "delete", cid)
        except CtrError as exc:
            if exc.not_found:
                return -1
            raise RuntimeFailure(f"cannot read the exit of {cid}: {exc.message}") from exc
        match = _REAPED_CODE.search(stderr)
        code = int(match.group(1)) if match else 0
        with contextlib.suppress(CtrError):
            await self._ctr("containers", "label", cid, f"{EXIT_CODE_LABEL}={code}")
        return code

    async def metrics(self, backend_id: str) -> BackendMetrics:
        try:
            raw = await self._ctr("tasks", "metrics", "--format", "json",
                                 container_id(backend_id))
        except CtrError as exc:
            raise RuntimeFailure(f"no metrics for backend {backend_id}: {exc.message}") from exc
        return _metrics(json.loads(raw))

    async def prepare_isolation(self) -> None:
        await self.network.bridge.prepare()  # its namespace pool's first attach would, too

    async def remove_isolation(self) -> bool:
        await self.netns.close()  # the ready namespaces are on the bridge too
        return await remove_network()

    async def close(self) -> None:
        await self.netns.close()
        await asyncio.gather(*self._runs, return_exceptions=True)  # let each container be
        await self._deletes.close()
        await self._force_deletes.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.calls.close()


async def _drain(queue: asyncio.Queue[BackendExit]) -> AsyncIterator[BackendExit]:
    while True:
        yield await queue.get()


def _parse_event(line: str) -> tuple[str, dict[str, Any]] | None:
    """``TIME NAMESPACE TOPIC JSON`` as ``ctr events`` prints it -> (topic, body).

    >>> _parse_event('2024-01-01 10:00:00.1 +0000 UTC sp /tasks/exit {"id":"a","pid":3}')
    ('/tasks/exit', {'id': 'a', 'pid': 3})
    """
    match = _EVENT.search(line)
    if match is None:
        return None
    try:
        body = json.loads(match.group("body"))
    except ValueError:
        return None
    return (match.group("topic"), body) if isinstance(body, dict) else None


def _metrics(raw: dict[str, Any]) -> BackendMetrics:
    """``ctr tasks metrics --format json``: cgroup v1 nests usage one level deeper than v2."""
    memory = raw.get("memory") or {}
    cpu = raw.get("cpu") or {}
    usage = memory.get("usage")
    memory_bytes = int(usage.get("usage", 0) if isinstance(usage, dict) else usage or 0)
    cpu_usage = cpu.get("usage")
    if isinstance(cpu_usage, dict):  # v1: nanoseconds
        cpu_seconds = int(cpu_usage.get("total", 0)) / 1e9
    else:  # v2: microseconds
        cpu_seconds = int(cpu.get("usage_usec", 0)) / 1e6
    return BackendMetrics(memory_bytes=memory_bytes, cpu_seconds=cpu_seconds)
