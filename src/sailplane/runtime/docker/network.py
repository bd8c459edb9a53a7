"""The bridge Docker backends are wired to: ``sp-docker0``, Sailplane's own, not Docker's.

The engine starts each backend with ``network_mode=none`` (an empty namespace, loopback
only); the drone then connects that namespace (Docker's ``SandboxKey``) to the bridge with a veth
pair and firewalls it (``runtime/bridge_network.py``). Docker never learns the address: the drone
reads it back from the address book when it adopts a running backend.
"""

from __future__ import annotations

from sailplane.runtime.bridge_network import BridgeNetwork
from sailplane.runtime.firewall import EgressPolicy

NETWORK_NAME = "sailplane-docker"
BRIDGE_NAME = "sp-docker0"  # at most 15 characters, a Linux interface name
DEFAULT_SUBNET = "10.214.0.0/16"


def backend_network(egress: EgressPolicy | None = None,
                    subnet: str = DEFAULT_SUBNET) -> BridgeNetwork:
    return BridgeNetwork(NETWORK_NAME, BRIDGE_NAME, subnet, egress or EgressPolicy())


async def remove_network() -> bool:
    """Delete the bridge and its firewall rules unless a backend (of any drone) is still on
    it. Whether they were removed."""
    return await backend_network().remove()
