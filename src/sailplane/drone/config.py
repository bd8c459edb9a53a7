"""The drone's configuration, and :func:`run_drone` which wires its parts together."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sailplane import __version__
from sailplane.drone.agent import DroneAgent
from sailplane.drone.executor import Executor, ExecutorSettings
from sailplane.drone.store import DroneStore
from sailplane.drone.watchdog import Watchdog, WatchdogConfig
from sailplane.errors import PolicyError, RuntimeFailure
from sailplane.mounts.pin import StagingArea, staging_root
from sailplane.mounts.policy import MountPolicy
from sailplane.protocol import Hello, HostVolumeOffer
from sailplane.runtime.base import Runtime, RuntimeName
from sailplane.runtime.containerd.ctr import DEFAULT_NAMESPACE
from sailplane.runtime.containerd.network import DEFAULT_SUBNET
from sailplane.runtime.firewall import EgressPolicy
from sailplane.state import TerminationReason

log = logging.getLogger(__name__)


class DroneConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    drone_id: str
    controller_url: str
    pool: str = ""
    runtime: RuntimeName = "docker"
    # containerd only: its socket (default_address() when None) and the namespace to use.
    containerd_address: str | None = None
    containerd_namespace: str = DEFAULT_NAMESPACE
    containerd_subnet: str = DEFAULT_SUBNET  # the containerd bridge's addresses
    # Networks backends may reach although private (the rest of the private ranges and the
    # host stay closed to them).
    egress_allow: tuple[str, ...] = ()
    policy: MountPolicy
    state_dir: Path
    token: str | None = None  # the drone credential (sailplane.credentials), named for it
    # Paths no host volume may expose besides the state directory (`sailplane dev`: its data
    # directory, with the controller's database and API token).
    protected: list[Path] = []
    settings: ExecutorSettings = ExecutorSettings()
    # `sailplane dev`: on exit terminate every backend and remove its container.
    terminate_on_exit: bool = False


def make_runtime(config: DroneConfig) -> Runtime:
    """The runtime the config names; each runtime's library is imported only when chosen."""
    if config.runtime == "containerd":
        from sailplane.runtime.containerd.ctr import default_address
        from sailplane.runtime.containerd.runtime import ContainerdRuntime

        return ContainerdRuntime(
            config.drone_id, config.state_dir.absolute(),
            config.containerd_address or default_address(), config.containerd_namespace,
            config.containerd_subnet, EgressPolicy(allow=config.egress_allow),
        )
    from sailplane.runtime.docker.runtime import DockerRuntime

    return DockerRuntime(config.drone_id, egress=EgressPolicy(allow=config.egress_allow))


def watchdog_config(config: DroneConfig) -> WatchdogConfig:
    """What the lease watchdog needs to find this drone's lease and its containers."""
    address = ""
    if config.runtime == "containerd":
        from sailplane.runtime.containerd.ctr import default_address

        address = config.containerd_address or default_address()
    return WatchdogConfig(
        drone_id=config.drone_id, drone_pid=os.getpid(), state_dir=config.state_dir.absolute(),
        runtime=config.runtime, containerd_address=address,
        containerd_namespace=config.containerd_namespace)


def check_protected(policy: MountPolicy, state_dir: Path, protected: list[Path]) -> None:
    """Refuse (:class:`PolicyError`) a host volume whose root is the state directory, holds it,
    or lies inside it (the store, other backends' pinned mounts), or that holds one of
    ``protected`` (a controller's database, an API token, a data directory)."""
    if policy.platform != "posix":
        return
    state = state_dir.resolve()
    for volume in policy.host_volumes.values():
        root = Path(volume.path).resolve()
        if _within(root, state) or _within(state, root):
            raise PolicyError(f"host volume {volume.name!r} ({root}) overlaps the drone's "
                              f"state directory {state}")
        for path in protected:
            if _within(path.resolve(), root):
                raise PolicyError(f"host volume {volume.name!r} ({root}) holds {path}, "
                                  "which no backend may see")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


INSTANCE_FILE = "instance-id"


def instance_id(state_dir: Path) -> str:
    """This drone's instance: a random id kept in its state directory (made on first use).
    Restarting with the same state is the same drone returning; another state directory under
    the same drone id is another drone, which the controller refuses while the first is live."""
    path = state_dir / INSTANCE_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        made = secrets.token_hex(8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(made)
        return made


def default_drone_id(data_dir: Path, prefix: str = "dev") -> str:
    """A drone id unique to a data directory (``dev-1a2b3c4d``), so two all-in-one clusters on
    one engine never share a drone id, and the same directory keeps its id across runs."""
    digest = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


def hello_for(config: DroneConfig, instance: str = "") -> Hello:
    return Hello(
        drone_id=config.drone_id, pool=config.pool, runtime=config.runtime, version=__version__,
        instance=instance,
        host_volumes=[
            HostVolumeOffer(name=v.name, access=v.access,
                            namespaces=list(v.namespaces) if v.namespaces is not None else None)
            for v in config.policy.host_volumes.values()
        ],
    )


async def run_drone(config: DroneConfig) -> None:
    """Run until cancelled; backends keep running and are adopted by the next start."""
    check_protected(config.policy, config.state_dir, config.protected)
    if not config.token:
        log.warning("drone %s has no credential: only a controller run with --insecure "
                    "accepts it", config.drone_id)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.state_dir.chmod(0o700)  # the drone's alone: its store, and the pinned mounts below
    store = DroneStore(config.state_dir / f"drone-{config.drone_id}.db")
    staging = StagingArea(staging_root(config.state_dir))
    executor = Executor(make_runtime(config), config.policy, store, staging, config.settings)
    await executor.start()
    try:
        await executor.runtime.prepare_isolation()  # not in its first backend's start
    except RuntimeFailure as exc:
        log.error("cannot prepare the backends' isolation (each start tries again): %s",
                  exc.message)
    hello = hello_for(config, instance_id(config.state_dir))
    agent = DroneAgent(config.controller_url, executor, hello, config.token,
                       watchdog=Watchdog(watchdog_config(config)))
    try:
        await agent.run()
    finally:
        if config.terminate_on_exit:
            await executor.terminate_all(TerminationReason.EXTERNAL)
        await executor.close(remove_isolation=config.terminate_on_exit)
        store.close()
