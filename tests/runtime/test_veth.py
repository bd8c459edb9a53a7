"""Wiring a network namespace to a bridge in-process (``veth.py``), on the real kernel: real
namespaces (made as the containerd runtime makes them), a bridge and an address book of the
test's own; all of it deleted afterwards, whatever happened."""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sailplane.errors import RuntimeFailure
from sailplane.runtime import firewall, veth
from sailplane.runtime.address_book import AddressBook
from sailplane.runtime.bridge_network import BridgeNetwork
from sailplane.runtime.containerd.netns import create_netns, delete_netns

SUBNET = ipaddress.IPv4Network("10.215.3.0/24")
PORT = 8080
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True).stdout


def ip_json(*argv: str) -> list[dict[str, object]]:
    shown: list[dict[str, object]] = json.loads(ip("-j", *argv) or "[]")
    return shown


@dataclass
class Wiring:
    bridge: str
    book: AddressBook
    namespaces: list[str]

    def namespace(self) -> str:
        path = f"/run/netns/sp-t{uuid.uuid4().hex[:10]}"
        self.namespaces.append(path)
        create_netns(path)
        return path

    def connect(self, container_id: str, netns: str) -> str:
        return str(veth.connect(self.bridge, SUBNET, self.book, container_id, netns))


@pytest.fixture
def wiring(tmp_path: Path) -> Iterator[Wiring]:
    made = Wiring(f"sp-t{uuid.uuid4().hex[:8]}", AddressBook(tmp_path / "book", veth.IFNAME), [])
    try:
        yield made
    finally:
        for path in made.namespaces:  # their pairs go with them
            delete_netns(path)
        veth.delete_bridge(made.bridge)


def ports_of(bridge: str) -> list[str]:
    return sorted(os.listdir(f"/sys/class/net/{bridge}/brif"))


def socket_in(netns: str) -> socket.socket:
    """A TCP socket in the namespace, opened by a thread that enters it and ends."""
    box: list[socket.socket] = []
    fd = os.open(netns, os.O_RDONLY)

    def enter() -> None:
        assert _libc.setns(fd, 0x40000000) == 0, os.strerror(ctypes.get_errno())
        box.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))

    try:
        thread = threading.Thread(target=enter)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    return box[0]


def test_attach_wires_eth0_and_the_host_end(wiring: Wiring) -> None:
    netns = wiring.namespace()
    name = os.path.basename(netns)

    address = wiring.connect("c-one", netns)

    assert ipaddress.IPv4Address(address) in SUBNET
    eth0 = ip_json("-n", name, "addr", "show", "eth0")[0]
    assert "UP" in eth0["flags"]  # type: ignore[operator]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]  # type: ignore[attr-defined]
            if a["family"] == "inet"] == [(address, 24)]
    assert "UP" in ip_json("-n", name, "link", "show", "lo")[0]["flags"]  # type: ignore[operator]
    routes = ip_json("-n", name, "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [("10.215.3.1", "eth0")]
    assert ports_of(wiring.bridge) == [veth.host_ifname("c-one")]
    host_end = ip_json("link", "show", veth.host_ifname("c-one"))[0]
    assert "UP" in host_end["flags"]  # type: ignore[operator]
    bridge = ip_json("addr", "show", wiring.bridge)[0]
    assert [a["local"] for a in bridge["addr_info"]  # type: ignore[attr-defined]
            if a["family"] == "inet"] == ["10.215.3.1"]
    assert Path(veth.IP_FORWARD).read_text().strip() == "1"
    assert wiring.book.holders() == {address: "c-one"}


def bridge_mac_now(bridge: str) -> tuple[str, str]:
    """The bridge's MAC address, and how it was assigned (``3``: set from user space)."""
    sysfs = Path("/sys/class/net") / bridge
    return ((sysfs / "address").read_text().strip(),
            (sysfs / "addr_assign_type").read_text().strip())


def test_the_bridge_keeps_one_mac_address_as_ports_come_and_go(wiring: Wiring) -> None:
    """A Linux bridge left to itself takes its ports' lowest MAC and changes it as they come
    and go; the backends' cached gateway entry then points nowhere and their answers to the
    host are lost for seconds. The bridge made here has a fixed one instead."""
    fixed = (veth.bridge_mac(wiring.bridge), "3")
    namespaces = [wiring.namespace() for _ in range(4)]
    for n, netns in enumerate(namespaces):
        wiring.connect(f"c-{n}", netns)
        assert bridge_mac_now(wiring.bridge) == fixed
    for n in range(4):
        veth.disconnect(f"c-{n}")
        assert bridge_mac_now(wiring.bridge) == fixed
    assert veth.bridge_mac(wiring.bridge) == veth.bridge_mac(wiring.bridge)  # from the name
    assert int(fixed[0].split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


def test_a_bridge_made_before_without_a_fixed_mac_gets_one(wiring: Wiring) -> None:
    """As the CNI plugin and the drones before this fix left it: the next attach fixes it."""
    subprocess.run(["ip", "link", "add", wiring.bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", wiring.bridge, "up"], check=True)
    assert bridge_mac_now(wiring.bridge)[1] != "3"
    wiring.connect("c-old", wiring.namespace())
    assert bridge_mac_now(wiring.bridge) == (veth.bridge_mac(wiring.bridge), "3")


def test_a_server_in_the_namespace_is_reached_from_the_host(wiring: Wiring) -> None:
    netns = wiring.namespace()
    address = wiring.connect("c-serve", netns)
    with socket_in(netns) as server:
        server.bind((address, PORT))
        server.listen()
        with socket.create_connection((address, PORT), timeout=10) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"ping")
                assert peer.recv(4) == b"ping"


def test_two_attaches_get_two_addresses_and_a_retry_the_same(wiring: Wiring) -> None:
    first, second = wiring.namespace(), wiring.namespace()
    a = wiring.connect("c-a", first)
    b = wiring.connect("c-b", second)
    assert a != b
    assert wiring.connect("c-a", first) == a  # the pair is made anew, the address kept
    assert ports_of(wiring.bridge) == sorted(veth.host_ifname(c) for c in ("c-a", "c-b"))
    assert wiring.book.holders() == {a: "c-a", b: "c-b"}
    assert len(ip_json("-n", os.path.basename(first), "link", "show")) == 2  # lo, eth0


def test_disconnect_deletes_the_pair(wiring: Wiring) -> None:
    netns = wiring.namespace()
    wiring.connect("c-gone", netns)
    assert veth.disconnect("c-gone")
    assert ports_of(wiring.bridge) == []
    assert [link["ifname"] for link in ip_json("-n", os.path.basename(netns), "link")] == ["lo"]
    assert not veth.disconnect("c-gone")


def test_a_missing_namespace_fails_and_leaves_nothing(wiring: Wiring) -> None:
    with pytest.raises(RuntimeFailure, match="cannot open network namespace"):
        wiring.connect("c-nowhere", f"/run/netns/sp-t{uuid.uuid4().hex[:10]}-none")
    assert wiring.book.holders() == {}
    assert not os.path.exists(f"/sys/class/net/{veth.host_ifname('c-nowhere')}")


def test_a_failure_half_way_undoes_the_pair_and_the_address(wiring: Wiring) -> None:
    """The namespace already routes by default elsewhere, so the last step fails, after the
    pair was made and the address reserved: both are undone."""
    netns = wiring.namespace()
    name = os.path.basename(netns)
    ip("-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")  # no dummy here
    ip("-n", name, "link", "set", "d0", "up")
    ip("-n", name, "addr", "add", "192.0.2.1/24", "dev", "d0")
    ip("-n", name, "route", "add", "default", "via", "192.0.2.254")
    other = wiring.connect("c-other", wiring.namespace())

    with pytest.raises(RuntimeFailure, match=f"cannot connect {netns}"):
        wiring.connect("c-half", netns)

    assert wiring.book.holders() == {other: "c-other"}
    assert ports_of(wiring.bridge) == [veth.host_ifname("c-other")]
    assert sorted(str(link["ifname"]) for link in ip_json("-n", name, "link")) \
        == ["d0", "d1", "lo"]


def test_bridge_network_detach_of_a_live_namespace(tmp_path: Path) -> None:
    """Through ``BridgeNetwork``, firewall included: detaching a namespace that lives on
    deletes its pair and frees its address; the bridge and its rules go at the end."""
    network = BridgeNetwork("sp-test-veth", f"sp-t{uuid.uuid4().hex[:8]}", str(SUBNET))
    network.book = AddressBook(tmp_path / "book", veth.IFNAME)
    path = f"/run/netns/sp-t{uuid.uuid4().hex[:10]}"
    create_netns(path)

    async def scenario() -> None:
        address = await network.attach("c-live", path)
        assert network.address_of("c-live") == address
        await network.detach("c-live", path)
        assert network.holders() == {}
        assert [link["ifname"] for link in ip_json("-n", os.path.basename(path), "link")] \
            == ["lo"]
        assert await network.remove()

    try:
        asyncio.run(scenario())
        assert not network.exists()
    finally:
        delete_netns(path)
        veth.delete_bridge(network.bridge)
        firewall.remove(network.bridge)


def test_bridge_network_prepare_installs_the_firewall_before_any_backend(tmp_path: Path) -> None:
    """A drone's start prepares the bridge's isolation (``Runtime.prepare_isolation``): its
    firewall is in place before the first backend, which then only wires its namespace."""
    network = BridgeNetwork("sp-test-veth", f"sp-t{uuid.uuid4().hex[:8]}", str(SUBNET))
    network.book = AddressBook(tmp_path / "book", veth.IFNAME)
    path = f"/run/netns/sp-t{uuid.uuid4().hex[:10]}"
    create_netns(path)

    async def scenario() -> None:
        await network.prepare()
        assert firewall.installed(network.bridge)
        await network.prepare()  # again: a no-op
        await network.attach("c-first", path)
        assert network.address_of("c-first") is not None
        await network.detach("c-first")

    try:
        asyncio.run(scenario())
    finally:
        delete_netns(path)
        veth.delete_bridge(network.bridge)
        firewall.remove(network.bridge)
        assert not firewall.installed(network.bridge)
