"""The Docker network backends run on: a bridge of Sailplane's own, isolated.

One user-defined bridge network, ``sailplane-backends`` (Linux bridge ``sp-backends``), with
inter-container traffic disabled, shared by every drone on the engine; the firewall rules of
``runtime/firewall.py`` keep its backends away from the host and private networks. Backends
still publish their port on 127.0.0.1, where the drone and the proxy reach them.
"""

from __future__ import annotations

import threading

import docker
import docker.errors

from sailplane.errors import RuntimeFailure
from sailplane.runtime import firewall

NETWORK_NAME = "sailplane-backends"
BRIDGE_NAME = "sp-backends"  # at most 15 characters, a Linux interface name
NETWORK_LABEL = "dev.sailplane.network"
_OPTIONS = {
    "com.docker.network.bridge.name": BRIDGE_NAME,
    "com.docker.network.bridge.enable_icc": "false",
}

_lock = threading.Lock()


def ensure_isolated_network(client: docker.DockerClient, egress: firewall.EgressPolicy) -> str:
    """Create the network if it is missing, (re)install its firewall; return its name.

    A network of that name that Sailplane did not make (no label, or inter-container traffic
    on) is refused rather than used."""
    with _lock:
        try:
            network = client.networks.get(NETWORK_NAME)
        except docker.errors.NotFound:
            try:
                network = client.networks.create(
                    NETWORK_NAME, driver="bridge", options=_OPTIONS,
                    labels={NETWORK_LABEL: "backends"}, check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: another drone made it meanwhile
                    raise RuntimeFailure(f"cannot create network {NETWORK_NAME}: "
                                         f"{exc.explanation}") from exc
                network = client.networks.get(NETWORK_NAME)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot inspect network {NETWORK_NAME}: {exc}") from exc
        attrs = network.attrs
        if (attrs.get("Labels") or {}).get(NETWORK_LABEL) != "backends" or any(
            (attrs.get("Options") or {}).get(key) != value for key, value in _OPTIONS.items()
        ):
            raise RuntimeFailure(f"network {NETWORK_NAME} exists but was not made by Sailplane "
                                 "with inter-container traffic off; remove it")
        firewall.install(BRIDGE_NAME, egress, docker_bridge=True)
        return NETWORK_NAME


def remove_isolated_network(client: docker.DockerClient) -> bool:
    """Remove the network and then its firewall rules, unless a container still uses it (a
    backend of another drone on this engine): then both stay. Whether they were removed."""
    with _lock:
        try:
            client.networks.get(NETWORK_NAME).remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code in (403, 409):  # it has active endpoints
                return False
            raise RuntimeFailure(f"cannot remove network {NETWORK_NAME}: {exc}") from exc
        firewall.remove(BRIDGE_NAME)
        return True

