"""The contract between a drone and a container runtime (docs/runtimes.md).

A runtime starts backends from a :class:`BackendSpec` whose mounts are already resolved (it
never sees a request's raw paths), tells the drone when one exits, and can list the backends
it owns after a drone restart. Every method is a coroutine and must not block the event
loop; library errors are translated into :class:`~sailplane.errors.RuntimeFailure`.

Shared types live here, not in one runtime, so a second runtime never imports the first.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sailplane.errors import RuntimeFailure
from sailplane.mounts.named import VOLUME_LABEL as VOLUME_LABEL  # re-exported: the runtimes use it
from sailplane.mounts.resolved import ResolvedMount
from sailplane.spec import PullPolicy, ResourceLimits

# The runtimes shipped (docs/runtimes.md), as ``sailplane drone --runtime`` names them.
RuntimeName = Literal["docker", "containerd"]
RUNTIMES: tuple[RuntimeName, ...] = ("docker", "containerd")
IMAGE_SEEN_SECONDS = 10.0

BACKEND_LABEL = "dev.sailplane.backend"
DRONE_LABEL = "dev.sailplane.drone"
WARM_LABEL = "dev.sailplane.warm"  # a warm container's image, on containers made for a pool
# The port a backend listens on inside its container, given to it as env PORT.
BACKEND_PORT = 8080
# The only Linux capabilities a backend keeps: what a web backend that drops root needs.
# Everything else (NET_RAW to sniff the bridge, MKNOD, SYS_CHROOT, ...) is dropped.
BACKEND_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID",
                        "SETUID")


@dataclass(frozen=True)
class BackendSpec:
    """Everything a runtime needs to start one backend."""

    backend_id: str
    image: str
    env: dict[str, str]
    mounts: list[ResolvedMount]
    resource_limits: ResourceLimits = field(default_factory=ResourceLimits)
    command: list[str] | None = None  # None: the image's own command


@dataclass(frozen=True)
class BackendAddress:
    """Where the drone (and a proxy on the same host) reaches a started backend."""

    host: str
    port: int


@dataclass(frozen=True)
class BackendExit:
    """A backend's container stopped, with its exit code."""

    backend_id: str
    exit_code: int


@dataclass(frozen=True)
class OwnedBackend:
    """A backend container found by label, e.g. after a drone restart."""

    backend_id: str
    running: bool
    address: BackendAddress | None
    exit_code: int | None


@dataclass(frozen=True)
class WarmContainer:
    """A container started ahead of its request (``drone/warm_pool.py``), not yet a backend."""

    name: str  # the runtime's name for it until it is claimed
    image: str
    address: BackendAddress
    pid: int  # its init process on the host, whose mount namespace claims inject into


@dataclass(frozen=True)
class BackendMetrics:
    memory_bytes: int
    cpu_seconds: float


class RecentImages:
    """Images a runtime found in its store lately, trusted for ``seconds`` without asking the
    engine again: most spawns use an image seen a moment ago. An image removed meanwhile makes
    the container's creation fail with a clear error, and is forgotten."""

    def __init__(self, seconds: float = IMAGE_SEEN_SECONDS) -> None:
        self.seconds = seconds
        self._seen: dict[str, float] = {}

    def fresh(self, image: str) -> bool:
        seen = self._seen.get(image)
        return seen is not None and time.monotonic() - seen < self.seconds

    def saw(self, image: str) -> None:
        self._seen[image] = time.monotonic()

    def forget(self, image: str) -> None:
        self._seen.pop(image, None)


@dataclass(frozen=True)
class NamedVolume:
    """A named volume Sailplane created (it carries our labels), as ``volumes ls`` shows it."""

    name: str  # the runtime's name
    namespace: str
    requested: str  # the name the requests ask for
    created_at: datetime | None  # None where the engine does not say


class Runtime(abc.ABC):
    """One container engine, used by exactly one drone (identified by ``drone_id``)."""

    @abc.abstractmethod
    async def prepare(self, image: str, pull_policy: PullPolicy) -> None:
        """Make ``image`` available. ``Never``/``IfNotPresent`` with a missing image, or a
        failed pull, raises :class:`RuntimeFailure` naming the image, without hanging."""

    @abc.abstractmethod
    async def start(self, spec: BackendSpec) -> BackendAddress:
        """Create and start the backend's container; provision named volumes on first use.

        A named volume that exists but is not Sailplane's for the mount's namespace, or one
        more than the namespace's cap, raises MountRefused before anything is created.

        On failure nothing of the container is left behind and RuntimeFailure is raised. A
        backend that exits before its address can be read raises BackendExited with its exit
        code instead; its container stays, and its exit is reported by :meth:`exits` too."""

    @abc.abstractmethod
    async def signal(self, backend_id: str, hard: bool) -> None:
        """Send SIGTERM (soft) or SIGKILL (hard). A container already gone is not an error:
        its exit has been or will be reported by :meth:`exits`."""

    @abc.abstractmethod
    async def remove(self, backend_id: str) -> None:
        """Remove the stopped container; nothing happens if it is already gone."""

    @abc.abstractmethod
    def exits(self) -> AsyncIterator[BackendExit]:
        """Every exit of a container this drone owns, from the moment of the first call on.

        Watching starts before this returns, so no exit after it can be missed."""

    @abc.abstractmethod
    async def owned(self) -> list[OwnedBackend]:
        """The containers labelled with this drone's id, running or not."""

    @abc.abstractmethod
    async def metrics(self, backend_id: str) -> BackendMetrics:
        """Memory and CPU used by a running backend."""

    async def volumes(self) -> list[NamedVolume]:
        """Every named volume of this engine that carries Sailplane's labels; a volume made
        by anyone else is never listed. Runtimes without named volumes raise RuntimeFailure."""
        raise RuntimeFailure(f"{type(self).__name__} has no named volumes")

    async def remove_volume(self, name: str) -> None:
        """Remove the named volume of runtime name ``name`` and its data.

        Raises RuntimeFailure, removing nothing, when it does not exist, does not carry
        Sailplane's labels, or a container (running or not) still uses it."""
        raise RuntimeFailure(f"{type(self).__name__} has no named volumes")

    async def start_warm(self, image: str, limits: ResourceLimits) -> WarmContainer:
        """Start a container of ``image`` with no mounts and no identity, isolated and limited
        as a backend. Runtimes that cannot claim warm containers raise RuntimeFailure."""
        raise RuntimeFailure(f"{type(self).__name__} has no warm pools")

    async def claim_warm(self, warm: WarmContainer, backend_id: str) -> BackendAddress:
        """Make ``warm`` the container of ``backend_id``: from now on every other method
        knows it by that id (its exit is reported, ``owned`` lists it, ``remove`` removes it)."""
        raise RuntimeFailure(f"{type(self).__name__} has no warm pools")

    async def discard_warm(self, warm: WarmContainer) -> None:
        """Remove an unclaimed (or failed) warm container; gone already is fine."""
        raise RuntimeFailure(f"{type(self).__name__} has no warm pools")

    async def init_pid(self, backend_id: str) -> int | None:
        """The host pid of the first process of the backend's running container, whose mount
        namespace hot-plug changes (``drone/hot_plug.py``); RuntimeFailure if it is not
        running. None: this runtime cannot tell, so its backends take no hot-plug."""
        return None

    async def prepare_isolation(self) -> None:
        """Make ready what backends are isolated with (their bridge's firewall), at the
        drone's start, so that its first backend's start does not pay for it."""
        return None

    async def remove_isolation(self) -> bool:
        """Remove the network backends run on and its firewall rules, unless a backend (of
        any drone) is still on it; whether they were removed. Nothing there is fine."""
        return True

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching the engine; containers keep running."""
