"""choose_drone: a pure decision over candidates, so no database here."""

from __future__ import annotations

import pytest

from sailplane.controller.scheduler import DroneCandidate, NoDroneAvailable, choose_drone
from sailplane.errors import MountRefused
from sailplane.mounts.plan import HostVolumeNeed
from sailplane.mounts.policy import Access
from sailplane.protocol import HostVolumeOffer


def drone(
    drone_id: str = "d1", pool: str = "", fresh: bool = True, draining: bool = False,
    load: int = 0, volumes: dict[str, Access] | None = None,
    namespaces: list[str] | None = None,
) -> DroneCandidate:
    offers = tuple(HostVolumeOffer(name=name, access=access, namespaces=namespaces)
                   for name, access in (volumes or {}).items())
    return DroneCandidate(drone_id=drone_id, pool=pool, fresh=fresh, draining=draining,
                          load=load, host_volumes=offers)


def choose(drones: list[DroneCandidate], pool: str = "", needs: list[HostVolumeNeed] | None = None,
           namespace: str = "") -> str:
    return choose_drone(drones, pool, needs or [], namespace).drone_id


def refusal(drones: list[DroneCandidate], pool: str = "",
            needs: list[HostVolumeNeed] | None = None, namespace: str = "") -> str:
    with pytest.raises(NoDroneAvailable) as caught:
        choose_drone(drones, pool, needs or [], namespace)
    assert caught.value.code == "no_drone_available"
    return caught.value.message


def policy_refusal(drones: list[DroneCandidate], pool: str = "",
                   needs: list[HostVolumeNeed] | None = None, namespace: str = "") -> str:
    """The live drones' policies refuse the request: the caller's mistake, not 503."""
    with pytest.raises(MountRefused) as caught:
        choose_drone(drones, pool, needs or [], namespace)
    assert caught.value.code == "mount_refused"
    return caught.value.message


def test_no_drones_at_all() -> None:
    assert refusal([]) == "no drone is connected"  # no empty pool or namespace named


def test_only_the_requested_pool() -> None:
    drones = [drone("a", pool="gpu"), drone("b", pool="")]
    assert choose(drones, pool="gpu") == "a"
    assert choose(drones, pool="") == "b"
    assert "pool 'cpu'" in refusal(drones, pool="cpu")


def test_stale_heartbeat_is_not_eligible() -> None:
    assert choose([drone("a", fresh=False, load=0), drone("b", load=9)]) == "b"
    assert "no drone is connected" in refusal([drone("a", fresh=False)])


def test_draining_is_not_eligible() -> None:
    assert choose([drone("a", draining=True), drone("b", load=5)]) == "b"
    assert refusal([drone("a", draining=True)], pool="") == "every drone is draining"


def test_draining_message_only_when_a_fresh_drone_drains() -> None:
    message = refusal([drone("a", draining=True, fresh=False)])
    assert "no drone is connected" in message


def test_least_loaded_wins_ties_by_id() -> None:
    assert choose([drone("a", load=3), drone("b", load=1), drone("c", load=2)]) == "b"
    assert choose([drone("b", load=1), drone("a", load=1)]) == "a"


def test_host_volume_by_name() -> None:
    drones = [drone("a", load=0, volumes={"config": Access.RO}),
              drone("b", load=5, volumes={"data": Access.RO})]
    assert choose(drones, needs=[HostVolumeNeed("data", write=False)]) == "b"
    message = refusal(drones, needs=[HostVolumeNeed("logs", write=False)])
    assert message == "no drone offers host volume 'logs' read-only"


def test_write_needs_read_write_offer() -> None:
    drones = [drone("a", load=0, volumes={"data": Access.RO}),
              drone("b", load=5, volumes={"data": Access.RW})]
    assert choose(drones, needs=[HostVolumeNeed("data", write=True)]) == "b"
    assert choose(drones, needs=[HostVolumeNeed("data", write=False)]) == "a"
    message = policy_refusal(drones[:1], needs=[HostVolumeNeed("data", write=True, mount=2)])
    assert message == "host volume 'data' is read-only on every drone; ask for read_only: true"
    with pytest.raises(MountRefused) as caught:
        choose_drone(drones[:1], "", [HostVolumeNeed("data", write=True, mount=2)], "")
    assert caught.value.mount == 2
    draining = [drone("a", volumes={"data": Access.RO}), drone("b", draining=True)]
    assert "read-only on every drone in pool 'gpu'" in policy_refusal(
        [drone("a", pool="gpu", volumes={"data": Access.RO})], pool="gpu",
        needs=[HostVolumeNeed("data", write=True)])
    assert "read-only on every drone" in policy_refusal(
        draining, needs=[HostVolumeNeed("data", write=True)])


def test_a_volume_no_live_drone_offers_can_pass_later() -> None:
    message = refusal([drone("a")], needs=[HostVolumeNeed("data", write=True)])
    assert message == "no drone offers host volume 'data' read-write"


def test_every_need_must_be_offered_by_the_same_drone() -> None:
    drones = [drone("a", volumes={"data": Access.RW}), drone("b", volumes={"config": Access.RO})]
    needs = [HostVolumeNeed("data", write=True), HostVolumeNeed("config", write=False)]
    assert "'config'" in refusal(drones, needs=needs)
    both = drone("c", load=7, volumes={"data": Access.RW, "config": Access.RO})
    assert choose([*drones, both], needs=needs) == "c"


def test_namespaces_restrict_a_volume() -> None:
    drones = [drone("a", load=0, volumes={"data": Access.RW}, namespaces=["editor"]),
              drone("b", load=5, volumes={"data": Access.RW})]
    need = [HostVolumeNeed("data", write=True)]
    assert choose(drones, needs=need, namespace="editor") == "a"
    assert choose(drones, needs=need, namespace="viewer") == "b"
    message = policy_refusal(drones[:1], needs=need, namespace="viewer")
    assert message == "host volume 'data' is not offered to namespace 'viewer' by any drone"


def test_empty_namespace_list_offers_to_nobody() -> None:
    lone = drone("a", volumes={"data": Access.RO}, namespaces=[])
    assert "namespace ''" in policy_refusal([lone], needs=[HostVolumeNeed("data", write=False)])


def test_candidates_are_not_mutated_and_result_is_one_of_them() -> None:
    drones = [drone("a", load=2), drone("b", load=2)]
    chosen = choose_drone(drones, "", [], "")
    assert chosen is drones[0]
    assert [d.drone_id for d in drones] == ["a", "b"]
