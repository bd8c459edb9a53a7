"""The bridge every backend is wired to: one network namespace per backend, on a bridge.

Both runtimes give each backend a network namespace with nothing in it but loopback (Docker:
``network_mode=none``; containerd: a named namespace made by the drone) and then connect it
to a Linux bridge of Sailplane's own with a veth pair, in the drone's process
(``runtime/veth.py``). The backend listens on its own address at ``BACKEND_PORT``, where the
drone and a proxy on this host reach it; no port is published on the host. The firewall rules
of ``runtime/firewall.py``, installed once per bridge, keep it away from the host, from
private networks and from the other backends on the bridge, and masquerade what it sends out.

Docker's own user-defined networks would do the same, but the engine starts a DNS resolver in
every container on one (a dozen ``iptables`` runs inside its namespace, ~70 ms a start here).
The wiring used to be CNI's ``bridge`` plugin (~15 ms a backend: two processes); it is now a
few netlink requests, laid out as the plugin laid them out.

The address records live in ``IPAM_DIR``, one directory per network for the whole host, in
the format and under the lock of CNI's ``host-local`` (``runtime/address_book.py``): drones
on one host share a bridge, so they share its address book too, including a drone still
running the plugin. A backend whose namespace is gone has only its record left to free; one
whose namespace lives on loses its veth pair first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from sailplane.runtime import firewall, veth
from sailplane.runtime.address_book import AddressBook
from sailplane.runtime.veth import IFNAME

# On tmpfs: a reboot, which ends every backend, frees every address too. The name is the one
# the CNI plugin used, so drones of either kind share one book.
IPAM_DIR = Path("/run/sailplane/cni")


@dataclass
class BridgeNetwork:
    """One bridge (``bridge``, at most 15 characters) and its subnet."""

    name: str  # the network's name: its address book's directory
    bridge: str
    subnet: str
    egress: firewall.EgressPolicy = field(default_factory=firewall.EgressPolicy)

    def __post_init__(self) -> None:
        self.network = ipaddress.IPv4Network(self.subnet)  # a bad option fails at start
        self._prepared = False
        self._prepare_lock = asyncio.Lock()
        self.book = AddressBook(IPAM_DIR / self.name, IFNAME)
        self._releasing: set[str] = set()  # containers whose address waits for a pass
        self._release_lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Install the firewall and load the wiring's messages, ahead of the first attach (a
        drone's start; each costs a few hundred milliseconds the first time). Safe to call
        again: the firewall is installed once per process."""
        if self._prepared:  # no lock, no thread: every attach asks
            return
        async with self._prepare_lock:
            if not self._prepared:
                await asyncio.to_thread(veth.load_messages)
                await asyncio.to_thread(firewall.install, self.bridge, self.egress,
                                        masquerade=self.subnet)
                self._prepared = True

    async def attach(self, container_id: str, netns: str) -> str:
        """Connect the namespace at path ``netns`` to the bridge as ``eth0``; its address.

        The firewall is installed before the first backend is connected, so no backend is
        ever on the bridge without it."""
        await self.prepare()
        # Shielded: a thread cannot be stopped half-way, and a cancelled caller's retry (or
        # detach) must find the pair and the record whole, not in the making.
        connecting = asyncio.ensure_future(asyncio.to_thread(
            veth.connect, self.bridge, self.network, self.book, container_id, netns))
        try:
            address = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            await asyncio.wait([connecting])
            raise
        return str(address)

    async def detach(self, container_id: str, netns: str = "") -> None:
        """Disconnect and free the address.

        ``netns``, a namespace that outlives this call, loses its veth pair first. Gone (or
        ``""``: gone, or deleted right after by the caller), the kernel deletes the pair with
        it and only the address is left to free."""
        if netns and os.path.exists(netns):
            await asyncio.to_thread(veth.disconnect, container_id)
        await self._release(container_id)

    async def _release(self, container_id: str) -> None:
        """Free the container's address together with every release queued meanwhile: one
        pass over the book at a time, each taking all the ids waiting (a pass reads every
        record, so one per container would cost the square of the backends)."""
        self._releasing.add(container_id)
        async with self._release_lock:
            if container_id not in self._releasing:
                return  # freed by the pass that ran while this one waited
            batch, self._releasing = self._releasing, set()
            try:
                await asyncio.to_thread(self.book.release, batch)
            except BaseException:
                self._releasing |= batch  # the next one waiting tries them again
                raise

    def address_of(self, container_id: str) -> str | None:
        """The address the container holds, from the address book; None if none."""
        return next((ip for ip, owner in self.holders().items() if owner == container_id), None)

    def holders(self) -> dict[str, str]:
        """The address book: address -> container id."""
        return self.book.holders()

    async def release_stale(self, alive: Callable[[], Awaitable[set[str]]]) -> int:
        """Free the addresses of containers gone without a ``detach`` (removed by hand, a
        drone killed mid-way); how many. ``alive`` lists the ids of every container that
        exists; it is called after the book is read, so a container that took an address
        meanwhile is not in the book yet, and one in the book is listed if it exists."""
        owners = set(self.holders().values())
        stale = owners - await alive()
        await asyncio.to_thread(self.book.release, stale)  # their namespaces are gone
        return len(stale)

    def exists(self) -> bool:
        return os.path.exists(f"/sys/class/net/{self.bridge}")

    async def remove(self) -> bool:
        """Delete the bridge and then its firewall rules, unless a backend (of any drone) is
        still on it: then both stay. Whether they were removed."""
        ports = Path(f"/sys/class/net/{self.bridge}/brif")
        if ports.exists() and any(ports.iterdir()):
            return False
        await asyncio.to_thread(veth.delete_bridge, self.bridge)
        await asyncio.to_thread(firewall.remove, self.bridge)
        self._prepared = False
        return True

