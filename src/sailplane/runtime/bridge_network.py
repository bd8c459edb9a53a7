"""The bridge every backend is wired to: one network namespace per backend, connected by CNI.

Both runtimes give each backend a network namespace with nothing in it but loopback (Docker:
``network_mode=none``; containerd: a named namespace made by the drone) and then connect it
to a Linux bridge of Sailplane's own with Debian's CNI plugins (``bridge`` with ``host-local``
addresses). The backend listens on its own address at ``BACKEND_PORT``, where the drone and a
proxy on this host reach it; no port is published on the host. The firewall rules of
``runtime/firewall.py``, installed once per bridge, keep it away from the host, from private
networks and from the other backends on the bridge, and masquerade what it sends out.

Docker's own user-defined networks would do the same, but the engine starts a DNS resolver in
every container on one (a dozen ``iptables`` runs inside its namespace, ~70 ms a start here);
one CNI ``ADD`` is ~13 ms.

The CNI configuration is the drone's own (never ``/etc/cni/net.d``). The address records live
in ``IPAM_DIR``, one directory per network for the whole host: drones on one host share a
bridge, so they must share its address book too (``host-local`` locks it). A backend whose
namespace is gone has only its record left, freed in-process (``runtime/address_book.py``)
rather than by a CNI ``DEL`` process per backend.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sailplane.errors import RuntimeFailure
from sailplane.runtime import firewall
from sailplane.runtime.address_book import AddressBook

CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CNI_VERSION = "1.0.0"
# On tmpfs: a reboot, which ends every backend, frees every address too.
IPAM_DIR = Path("/run/sailplane/cni")
CNI_TIMEOUT_SECONDS = 30
IFNAME = "eth0"  # the backend's interface, in every backend


@dataclass
class BridgeNetwork:
    """One bridge (``bridge``, at most 15 characters) and its subnet."""

    name: str  # the CNI network's name, also the address book's directory
    bridge: str
    subnet: str
    egress: firewall.EgressPolicy = field(default_factory=firewall.EgressPolicy)

    def __post_init__(self) -> None:
        ipaddress.IPv4Network(self.subnet)  # a bad subnet option fails at start
        self._firewall_ready = False
        self._firewall_lock = asyncio.Lock()
        self.book = AddressBook(IPAM_DIR / self.name, IFNAME)
        self._releasing: set[str] = set()  # containers whose address waits for a pass
        self._release_lock = asyncio.Lock()

    def config(self) -> dict[str, Any]:
        return {
            "cniVersion": CNI_VERSION, "name": self.name, "type": "bridge",
            # Masquerading is one rule of the firewall's for the whole subnet: the plugin's
            # own would add and remove iptables chains for every backend (~80 ms each).
            "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(IPAM_DIR)},
        }

    async def attach(self, container_id: str, netns: str) -> str:
        """Connect the namespace at path ``netns`` to the bridge as ``eth0``; its address.

        The firewall is installed before the first backend is connected, so no backend is
        ever on the bridge without it."""
        async with self._firewall_lock:
            if not self._firewall_ready:
                await asyncio.to_thread(firewall.install, self.bridge, self.egress,
                                        masquerade=self.subnet)
                self._firewall_ready = True
        result = await self._plugin("ADD", container_id, netns)
        try:
            address: str = result["ips"][0]["address"].split("/")[0]
        except (KeyError, IndexError) as exc:
            raise RuntimeFailure(f"CNI gave no address: {result}") from exc
        return address

    async def detach(self, container_id: str, netns: str = "") -> None:
        """Disconnect and free the address.

        ``netns``, a namespace that outlives this call, is disconnected by a CNI ``DEL``
        (its ``eth0`` deleted, the address freed). Gone (or ``""``: gone, or deleted right
        after by the caller), the kernel deletes the interface with it and only the address
        is left to free: that is done here, without a process."""
        if netns and os.path.exists(netns):
            await self._plugin("DEL", container_id, netns)
        else:
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

    async def _plugin(self, command: str, container_id: str, netns: str) -> dict[str, Any]:
        bin_dir = next((d for d in CNI_BIN_DIRS if os.path.exists(f"{d}/bridge")), None)
        if bin_dir is None:
            raise RuntimeFailure("the CNI plugins are missing (apt-get install "
                                 "containernetworking-plugins); looked in "
                                 + " and ".join(CNI_BIN_DIRS))
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": IFNAME,
               "CNI_PATH": bin_dir, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")}
        out = await run(f"{bin_dir}/bridge", env=env, stdin=json.dumps(self.config()))
        if command != "ADD":
            return {}
        try:
            result: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise RuntimeFailure(f"CNI {command} answered {out!r}") from exc
        return result

    def exists(self) -> bool:
        return os.path.exists(f"/sys/class/net/{self.bridge}")

    async def remove(self) -> bool:
        """Delete the bridge and then its firewall rules, unless a backend (of any drone) is
        still on it: then both stay. Whether they were removed."""
        ports = Path(f"/sys/class/net/{self.bridge}/brif")
        if ports.exists() and any(ports.iterdir()):
            return False
        await run("ip", "link", "delete", self.bridge, check=False)
        await asyncio.to_thread(firewall.remove, self.bridge)
        self._firewall_ready = False
        return True


async def run(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None,
              check: bool = True) -> str:
    """Run a short command (a CNI plugin, ``ip``); its output, or RuntimeFailure."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        async with asyncio.timeout(CNI_TIMEOUT_SECONDS):
            out, err = await process.communicate(stdin.encode() if stdin else None)
    except TimeoutError as exc:
        process.kill()
        raise RuntimeFailure(f"{argv[0]} did not finish in {CNI_TIMEOUT_SECONDS}s") from exc
    if check and process.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv[:3])} failed: {(err or out).decode().strip()}")
    return out.decode()
