"""A named network namespace of its own for every containerd backend, on the ``sp-ctr0`` bridge.

A backend's namespace is a named network namespace made in the drone's process
(``netns.py``), wired to the bridge (``runtime/bridge_network.py``: veth pair, firewall); the
container starts in it with ``ctr run --with-ns network:...``. Namespaces are made and wired
ahead of time by a small pool (``netns_pool.py``), so a start only takes one. Removing the
backend frees its address and deletes its namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from sailplane.errors import RuntimeFailure
from sailplane.runtime import firewall
from sailplane.runtime.bridge_network import BridgeNetwork
from sailplane.runtime.containerd.netns import create_netns, delete_netns

NETWORK_NAME = "sailplane"
BRIDGE_NAME = "sp-ctr0"
DEFAULT_SUBNET = "10.213.0.0/16"
NETNS_DIR = Path("/run/netns")


@dataclass
class NamespaceNetwork:
    """The namespaces of containerd backends and their bridge."""

    subnet: str = DEFAULT_SUBNET
    egress: firewall.EgressPolicy = field(default_factory=firewall.EgressPolicy)

    def __post_init__(self) -> None:
        self.bridge = BridgeNetwork(NETWORK_NAME, BRIDGE_NAME, self.subnet, self.egress)

    def netns_path(self, name: str) -> str:
        return str(NETNS_DIR / name)

    async def attach(self, name: str) -> str:
        """Make the namespace ``name`` and connect it; its address on the bridge. ``name`` is
        also its holder's id in the address book (its container id)."""
        path = self.netns_path(name)
        if os.path.exists(path):
            await self.detach(name)  # what an earlier, interrupted attempt left
        making = asyncio.ensure_future(asyncio.to_thread(create_netns, path))
        try:
            await asyncio.shield(making)  # a thread cannot be stopped half-way
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # let it end, then undo what it made
                await making
            if making.done() and not making.cancelled() and making.exception() is None:
                delete_netns(path)
            raise
        except OSError as exc:
            raise RuntimeFailure(f"cannot make network namespace {name}: {exc}") from exc
        try:
            return await self.bridge.attach(name, path)
        except BaseException:
            delete_netns(path)  # two system calls: even if cancelled
            raise

    async def detach(self, name: str) -> None:
        """Delete the namespace and free the address; nothing there is fine.

        The namespace goes first: its interfaces go with it, so only the address is left to
        free, in one pass over the address book for any number of backends."""
        path = self.netns_path(name)
        try:
            if os.path.exists(path):
                await asyncio.to_thread(delete_netns, path)
        finally:
            await self.bridge.detach(name)


def bridge_exists() -> bool:
    return os.path.exists(f"/sys/class/net/{BRIDGE_NAME}")


async def remove_network() -> bool:
    """Delete the bridge and its firewall rules unless a backend (of any drone) is still on
    it. Whether they were removed."""
    return await NamespaceNetwork().bridge.remove()
