"""A network namespace of its own for every containerd backend, wired by CNI.

For each backend the drone makes a named network namespace (``ip netns add``), runs Debian's
CNI plugins on it (``containernetworking-plugins``: ``bridge`` with ``host-local``
addresses; the firewall masquerades the subnet) and starts the container in it with
``ctr run --with-ns network:...``. The
backend listens on its own address at ``BACKEND_PORT``, where the drone and a proxy on this
host reach it; the firewall rules of ``runtime/firewall.py`` keep it away from the host, from
private networks and from the other backends on the bridge. Removing the backend runs the CNI
``DEL`` and deletes the namespace.

The CNI configuration is the drone's own (never ``/etc/cni/net.d``), and so is the address
database (``{state_dir}/cni``), so nothing here touches another CNI user's setup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sailplane.errors import RuntimeFailure
from sailplane.runtime import firewall

CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CNI_VERSION = "1.0.0"
NETWORK_NAME = "sailplane"
BRIDGE_NAME = "sp-ctr0"
DEFAULT_SUBNET = "10.213.0.0/16"
NETNS_DIR = Path("/run/netns")
CNI_TIMEOUT_SECONDS = 30


def netns_name(container_id: str) -> str:
    return container_id  # ``sailplane-{backend_id}``: one plain, unique name


@dataclass
class CniNetwork:
    """The bridge network of one drone's containerd backends."""

    state_dir: Path
    subnet: str = DEFAULT_SUBNET
    egress: firewall.EgressPolicy = field(default_factory=firewall.EgressPolicy)

    def __post_init__(self) -> None:
        ipaddress.IPv4Network(self.subnet)  # a bad --containerd-subnet fails at start
        self._firewall_ready = False
        self._firewall_lock = asyncio.Lock()

    def config(self) -> dict[str, Any]:
        return {
            "cniVersion": CNI_VERSION, "name": NETWORK_NAME, "type": "bridge",
            # Masquerading is one rule of the firewall's for the whole subnet: the plugin's
            # own would add and remove iptables chains for every backend (~80 ms each).
            "bridge": BRIDGE_NAME, "isGateway": True, "ipMasq": False, "hairpinMode": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.state_dir / "cni")},
        }

    def netns_path(self, container_id: str) -> str:
        return str(NETNS_DIR / netns_name(container_id))

    async def attach(self, container_id: str) -> str:
        """Make the backend's namespace and connect it; its address on the bridge."""
        async with self._firewall_lock:
            if not self._firewall_ready:
                await asyncio.to_thread(firewall.install, BRIDGE_NAME, self.egress,
                                        docker_bridge=False, masquerade=self.subnet)
                self._firewall_ready = True
        await self.detach(container_id)  # what an earlier, interrupted attempt left
        await _run("ip", "netns", "add", netns_name(container_id))
        try:
            # A backend talking to itself (its own address or localhost) goes through lo.
            await _run("ip", "-n", netns_name(container_id), "link", "set", "lo", "up")
            result = await self._plugin("ADD", container_id)
        except BaseException:
            await _run("ip", "netns", "delete", netns_name(container_id), check=False)
            raise
        try:
            address: str = result["ips"][0]["address"].split("/")[0]
        except (KeyError, IndexError) as exc:
            raise RuntimeFailure(f"CNI gave no address: {result}") from exc
        return address

    async def detach(self, container_id: str) -> None:
        """Disconnect and delete the namespace; nothing there is fine."""
        if not os.path.exists(self.netns_path(container_id)):
            return
        try:
            await self._plugin("DEL", container_id)
        finally:
            await _run("ip", "netns", "delete", netns_name(container_id), check=False)

    async def _plugin(self, command: str, container_id: str) -> dict[str, Any]:
        bin_dir = next((d for d in CNI_BIN_DIRS if os.path.exists(f"{d}/bridge")), None)
        if bin_dir is None:
            raise RuntimeFailure("the CNI plugins are missing (apt-get install "
                                 "containernetworking-plugins); looked in "
                                 + " and ".join(CNI_BIN_DIRS))
        await asyncio.to_thread((self.state_dir / "cni").mkdir, mode=0o700, parents=True,
                                exist_ok=True)
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": self.netns_path(container_id), "CNI_IFNAME": "eth0",
               "CNI_PATH": bin_dir, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")}
        out = await _run(f"{bin_dir}/bridge", env=env, stdin=json.dumps(self.config()))
        if command != "ADD":
            return {}
        try:
            result: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise RuntimeFailure(f"CNI {command} answered {out!r}") from exc
        return result


def bridge_exists() -> bool:
    return os.path.exists(f"/sys/class/net/{BRIDGE_NAME}")


async def remove_network() -> bool:
    """Delete the bridge and then its firewall rules, unless a backend (of any drone) is
    still on it: then both stay. Whether they were removed."""
    ports = Path(f"/sys/class/net/{BRIDGE_NAME}/brif")
    if ports.exists() and any(ports.iterdir()):
        return False
    await _run("ip", "link", "delete", BRIDGE_NAME, check=False)
    await asyncio.to_thread(firewall.remove, BRIDGE_NAME)
    return True


async def _run(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None,
               check: bool = True) -> str:
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
