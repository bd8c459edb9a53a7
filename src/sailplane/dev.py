"""``sailplane dev``: controller, drone and proxy in one process, SQLite under a data dir.

The controller starts first and the drone and the proxy once it listens, so neither has to
retry. Ctrl-C (or SIGTERM) stops them in the other order: the drone first terminates every
backend and removes its container, so nothing is left running, then the proxy, then the
controller. Named volumes outlive it; :func:`run_dev` returns the names of those on the engine.

Every start makes a fresh controller secret (kept in memory only) and credentials for the
drone and the proxy, and writes an API token to ``DATA_DIR/api-token`` (0600), with a link
to it where the CLI looks (:func:`~sailplane.credentials.dev_token_link`); tokens of an
earlier start stop working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from sailplane.controller.config import ControllerConfig
from sailplane.controller.run import controller_server
from sailplane.credentials import Role, dev_token_link, mint, new_secret, write_private
from sailplane.drone.config import (
    DroneConfig,
    check_protected,
    default_drone_id,
    make_runtime,
    run_drone,
)
from sailplane.drone.executor import ExecutorSettings
from sailplane.drone.limits import OperatorLimits
from sailplane.drone.warm_pool import WarmPoolSpec
from sailplane.errors import SailplaneError
from sailplane.mounts.policy import MountPolicy
from sailplane.proxy.limits import ProxyLimits
from sailplane.proxy.run import ProxyConfig, run_proxy
from sailplane.runtime.base import RuntimeName
from sailplane.runtime.containerd.ctr import DEFAULT_NAMESPACE
from sailplane.runtime.containerd.network import DEFAULT_SUBNET

log = logging.getLogger(__name__)

API_TOKEN_FILE = "api-token"
DEV_SUBJECT = "dev"
LISTEN_POLL_SECONDS = 0.02


class DevConfig(BaseModel):
    controller_port: int = 9090
    proxy_port: int = 9091
    drone_id: str | None = None  # default: default_drone_id(data_dir), unique to the directory
    data_dir: Path = Path(".sailplane")
    mount_base: Path | None = None  # default: {data_dir}/volumes/default
    host_volumes: list[str] = []
    runtime: RuntimeName = "docker"
    containerd_address: str | None = None
    containerd_namespace: str = DEFAULT_NAMESPACE
    containerd_subnet: str = DEFAULT_SUBNET
    egress_allow: list[str] = []
    warm_pools: list[WarmPoolSpec] = []  # the built-in drone's --warm-pool
    limits: OperatorLimits = Field(default_factory=OperatorLimits)  # the built-in drone's caps
    named_volumes: bool = True
    max_named_volumes_per_namespace: int | None = Field(default=None, ge=0)
    proxy_limits: ProxyLimits = Field(default_factory=ProxyLimits)  # the built-in proxy's
    default_max_idle_seconds: int | None = Field(default=None, gt=0)  # the controller's

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def default_mount_base(self) -> Path:
        return self.mount_base or self.data_dir / "volumes" / "default"

    def api_token_path(self) -> Path:
        return self.data_dir.absolute() / API_TOKEN_FILE


def dev_parts(
    config: DevConfig, secret: str | None = None,
) -> tuple[ControllerConfig, DroneConfig, ProxyConfig]:
    """The three components' configurations, with credentials under ``secret`` (a fresh one
    if None); makes the data directories. Raises PolicyError if a host volume would expose
    the data directory."""
    secret = secret or new_secret()
    mount_base = config.default_mount_base().absolute()
    mount_base.mkdir(parents=True, exist_ok=True)
    data_dir = config.data_dir.absolute()
    # Two all-in-one clusters on one engine must never share a drone id (they would remove
    # each other's containers): the default is derived from the data directory.
    drone_id = config.drone_id or default_drone_id(data_dir)
    controller = ControllerConfig(
        database_url=f"sqlite:///{data_dir}/controller.db", proxy_url=config.proxy_url,
        controller_url=config.controller_url, secrets=[secret],
        default_max_idle_seconds=config.default_max_idle_seconds,
    )
    drone = DroneConfig(
        drone_id=drone_id, controller_url=config.controller_url,
        policy=config.limits.cap_policy(
            MountPolicy.from_flags(str(mount_base), config.host_volumes)
        ).model_copy(update={
            "named_volumes": config.named_volumes,
            "max_named_volumes_per_namespace": config.max_named_volumes_per_namespace,
        }),
        state_dir=data_dir / "drone", terminate_on_exit=True, runtime=config.runtime,
        containerd_address=config.containerd_address,
        containerd_namespace=config.containerd_namespace,
        containerd_subnet=config.containerd_subnet, egress_allow=tuple(config.egress_allow),
        settings=ExecutorSettings(limits=config.limits, warm_pools=tuple(config.warm_pools)),
        token=mint(secret, Role.DRONE, drone_id), protected=[data_dir],
    )
    check_protected(drone.policy, drone.state_dir, drone.protected)
    proxy = ProxyConfig(controller_url=config.controller_url, port=config.proxy_port,
                        limits=config.proxy_limits,
                        ctrl_token=mint(secret, Role.PROXY, DEV_SUBJECT))
    return controller, drone, proxy


def publish_api_token(config: DevConfig, secret: str) -> Path:
    """Write a fresh API token to ``DATA_DIR/api-token`` (0600, atomically) and point the
    CLI's link for the controller port at it; the token file's path."""
    path = config.api_token_path()
    write_private(path, mint(secret, Role.API, DEV_SUBJECT))
    link = dev_token_link(config.controller_port)
    try:
        link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = link.with_name(f".{link.name}.{secrets.token_hex(6)}")
        os.symlink(path, temporary)
        os.replace(temporary, link)
    except OSError as exc:
        log.warning("could not link %s to %s (%s): give the CLI --token-file %s", link, path,
                    exc.strerror, path)
    return path


def _unlink_api_token(config: DevConfig) -> None:
    """Remove the CLI's link if it still points at this data directory's token."""
    link = dev_token_link(config.controller_port)
    with contextlib.suppress(OSError):
        if os.readlink(link) == str(config.api_token_path()):
            link.unlink()


@dataclass(frozen=True)
class DevParts:
    """The three parts' configurations and the secret their credentials are signed with."""

    secret: str
    controller: ControllerConfig
    drone: DroneConfig
    proxy: ProxyConfig


def prepare_dev(config: DevConfig) -> DevParts:
    """Check and configure everything before anything starts (PolicyError if refused)."""
    secret = new_secret()
    return DevParts(secret, *dev_parts(config, secret))


async def run_dev(config: DevConfig, prepared: DevParts | None = None) -> list[str]:
    """Run until Ctrl-C or SIGTERM (or one part fails, whose error is raised); the runtime
    names of the named volumes left on the engine."""
    parts = prepared or prepare_dev(config)
    publish_api_token(config, parts.secret)
    server = await asyncio.to_thread(controller_server, parts.controller, "127.0.0.1",
                                     config.controller_port)
    serving = asyncio.create_task(server.serve())
    others: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(LISTEN_POLL_SECONDS)
        if serving.done():
            await serving  # its error, if it has one
            return []
        # After uvicorn installed its handlers: a signal now stops the parts in order.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        others = [asyncio.create_task(run_drone(parts.drone)),
                  asyncio.create_task(run_proxy(parts.proxy))]
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([serving, stopping, *others], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for task in others:  # the drone first: it terminates every backend
            await _stop(task)
    finally:
        for task in others:
            await _stop(task)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        server.should_exit = True
        await serving
        _unlink_api_token(config)
    return await _named_volumes(parts.drone)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a part and wait for it; its own error (not the cancellation) is raised."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _named_volumes(drone: DroneConfig) -> list[str]:
    try:
        engine = make_runtime(drone)
        try:
            return sorted(volume.name for volume in await engine.volumes())
        finally:
            await engine.close()
    except (SailplaneError, OSError) as exc:
        log.debug("could not list the named volumes: %s", exc)
        return []
