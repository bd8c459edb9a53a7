"""A named network namespace of its own for every containerd backend, on the ``sp-ctr0`` bridge.

For each backend the drone makes a named network namespace (``ip netns add``), wires it to
the bridge (``runtime/bridge_network.py``: CNI, firewall) and starts the container in it with
``ctr run --with-ns network:...``. Removing the backend frees its address and deletes the
namespace (in the drone's process: ``netns.py``).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from sailplane.runtime import firewall
from sailplane.runtime.bridge_network import BridgeNetwork, run
from sailplane.runtime.containerd.netns import delete_netns

NETWORK_NAME = "sailplane"
BRIDGE_NAME = "sp-ctr0"
DEFAULT_SUBNET = "10.213.0.0/16"
NETNS_DIR = Path("/run/netns")


def netns_name(container_id: str) -> str:
    return container_id  # ``sailplane-{backend_id}``: one plain, unique name


@dataclass
class CniNetwork:
    """The namespaces of containerd backends and their bridge."""

    subnet: str = DEFAULT_SUBNET
    egress: firewall.EgressPolicy = field(default_factory=firewall.EgressPolicy)

    def __post_init__(self) -> None:
        self.bridge = BridgeNetwork(NETWORK_NAME, BRIDGE_NAME, self.subnet, self.egress)

    def netns_path(self, container_id: str) -> str:
        return str(NETNS_DIR / netns_name(container_id))

    async def attach(self, container_id: str) -> str:
        """Make the backend's namespace and connect it; its address on the bridge."""
        if os.path.exists(self.netns_path(container_id)):
            await self.detach(container_id)  # what an earlier, interrupted attempt left
        await run("ip", "netns", "add", netns_name(container_id))
        try:
            # A backend talking to itself (its own address or localhost) goes through lo.
            await run("ip", "-n", netns_name(container_id), "link", "set", "lo", "up")
            return await self.bridge.attach(container_id, self.netns_path(container_id))
        except BaseException:
            delete_netns(self.netns_path(container_id))  # two system calls: even if cancelled
            raise

    async def detach(self, container_id: str) -> None:
        """Free the address and delete the namespace; nothing there is fine."""
        path = self.netns_path(container_id)
        existed = os.path.exists(path)
        try:
            await self.bridge.detach(container_id, path if existed else "")
        finally:
            if existed:
                await asyncio.to_thread(delete_netns, path)


def bridge_exists() -> bool:
    return os.path.exists(f"/sys/class/net/{BRIDGE_NAME}")


async def remove_network() -> bool:
    """Delete the bridge and its firewall rules unless a backend (of any drone) is still on
    it. Whether they were removed."""
    return await CniNetwork().bridge.remove()
