"""``sailplane dev``: controller, drone and proxy in one process, SQLite under a data dir.

Ctrl-C stops the three together; the drone first terminates every backend and removes its
container, so nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pydantic import BaseModel, Field

from sailplane.controller.config import ControllerConfig
from sailplane.controller.run import run_controller
from sailplane.drone.config import DroneConfig, run_drone
from sailplane.drone.executor import ExecutorSettings
from sailplane.drone.limits import OperatorLimits
from sailplane.mounts.policy import MountPolicy
from sailplane.proxy.run import ProxyConfig, run_proxy
from sailplane.runtime.base import RuntimeName
from sailplane.runtime.containerd.ctr import DEFAULT_NAMESPACE


class DevConfig(BaseModel):
    controller_port: int = 9090
    proxy_port: int = 9091
    drone_id: str = "dev"
    data_dir: Path = Path(".sailplane")
    mount_base: Path | None = None  # default: {data_dir}/volumes/default
    host_volumes: list[str] = []
    runtime: RuntimeName = "docker"
    containerd_address: str | None = None
    containerd_namespace: str = DEFAULT_NAMESPACE
    limits: OperatorLimits = Field(default_factory=OperatorLimits)  # the built-in drone's caps
    named_volumes: bool = True
    max_named_volumes_per_namespace: int | None = Field(default=None, ge=0)

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def default_mount_base(self) -> Path:
        return self.mount_base or self.data_dir / "volumes" / "default"


def dev_parts(config: DevConfig) -> tuple[ControllerConfig, DroneConfig, ProxyConfig]:
    """The three components' configurations; makes the data directories."""
    mount_base = config.default_mount_base().absolute()
    mount_base.mkdir(parents=True, exist_ok=True)
    data_dir = config.data_dir.absolute()
    controller = ControllerConfig(
        database_url=f"sqlite:///{data_dir}/controller.db", proxy_url=config.proxy_url,
        controller_url=config.controller_url,
    )
    drone = DroneConfig(
        drone_id=config.drone_id, controller_url=config.controller_url,
        policy=config.limits.cap_policy(
            MountPolicy.from_flags(str(mount_base), config.host_volumes)
        ).model_copy(update={
            "named_volumes": config.named_volumes,
            "max_named_volumes_per_namespace": config.max_named_volumes_per_namespace,
        }),
        state_dir=data_dir / "drone", terminate_on_exit=True, runtime=config.runtime,
        containerd_address=config.containerd_address,
        containerd_namespace=config.containerd_namespace,
        settings=ExecutorSettings(limits=config.limits),
    )
    proxy = ProxyConfig(controller_url=config.controller_url, port=config.proxy_port)
    return controller, drone, proxy


async def run_dev(config: DevConfig) -> None:
    controller, drone, proxy = dev_parts(config)
    tasks = [
        asyncio.create_task(run_controller(controller, "127.0.0.1", config.controller_port)),
        asyncio.create_task(run_drone(drone)),
        asyncio.create_task(run_proxy(proxy)),
    ]
    try:
        # The controller returns on Ctrl-C (uvicorn handles the signal); then stop the rest.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
