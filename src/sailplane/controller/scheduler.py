"""Choosing a drone for a new backend: a pure decision, tested without any I/O.

Eligible drones are in the requested pool, have a fresh heartbeat, are not draining, and offer
every host volume the request names, with write access where it asks for it and for its
namespace (like Nomad's host volumes). Among them the least loaded wins. When none is
eligible the error says why, in words an operator can act on: a request that the live drones'
policies refuse (write access to a volume every drone offers read-only, a volume no drone offers
to the key's namespace) is the caller's mistake, :class:`MountRefused`; what can pass (no drone,
every drone draining, no drone offering the volume yet) is :class:`NoDroneAvailable`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sailplane.errors import MountRefused, SailplaneError
from sailplane.mounts.plan import HostVolumeNeed
from sailplane.mounts.policy import Access
from sailplane.protocol import HostVolumeOffer


class NoDroneAvailable(SailplaneError):
    """Raised when no drone can take a backend; the message says why."""

    code = "no_drone_available"


@dataclass(frozen=True)
class DroneCandidate:
    drone_id: str
    pool: str
    fresh: bool
    draining: bool
    load: int
    host_volumes: tuple[HostVolumeOffer, ...]


def offers(drone: DroneCandidate, need: HostVolumeNeed, namespace: str) -> bool:
    for volume in drone.host_volumes:
        if volume.name != need.name:
            continue
        if need.write and volume.access is not Access.RW:
            return False
        return volume.namespaces is None or namespace in volume.namespaces
    return False


def _in_pool(pool: str) -> str:
    return f" in pool {pool!r}" if pool else ""


def _to_namespace(namespace: str) -> str:
    return f" to namespace {namespace!r}" if namespace else ""


def check_policies(
    live: list[DroneCandidate], pool: str, needs: list[HostVolumeNeed], namespace: str
) -> None:
    """Raise MountRefused for a need that drones offer, but never as asked for."""
    for need in needs:
        named = [v for d in live for v in d.host_volumes if v.name == need.name]
        if not named:
            continue  # a drone offering it may yet connect: that can pass
        for_namespace = [v for v in named if v.namespaces is None or namespace in v.namespaces]
        if not for_namespace:
            raise MountRefused(need.mount, f"host volume {need.name!r} is not offered to "
                                           f"namespace {namespace!r} by any drone{_in_pool(pool)}")
        if need.write and all(v.access is not Access.RW for v in for_namespace):
            raise MountRefused(need.mount, f"host volume {need.name!r} is read-only on every "
                                           f"drone{_in_pool(pool)}; ask for read_only: true")


def choose_drone(
    drones: list[DroneCandidate], pool: str, needs: list[HostVolumeNeed], namespace: str
) -> DroneCandidate:
    live = [d for d in drones if d.pool == pool and d.fresh]
    if not live:
        raise NoDroneAvailable(f"no drone is connected{_in_pool(pool)}")
    check_policies(live, pool, needs, namespace)
    open_ = [d for d in live if not d.draining]
    if not open_:
        raise NoDroneAvailable(f"every drone{_in_pool(pool)} is draining")
    eligible = open_
    for need in needs:
        eligible = [d for d in eligible if offers(d, need, namespace)]
        if not eligible:
            access = "read-write" if need.write else "read-only"
            raise NoDroneAvailable(
                f"no drone{_in_pool(pool)} offers host volume {need.name!r} {access}"
                f"{_to_namespace(namespace)}"
            )
    return min(eligible, key=lambda d: (d.load, d.drone_id))
