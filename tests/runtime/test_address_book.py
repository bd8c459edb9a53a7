"""The address book reserves and frees as CNI's ``host-local`` does, in its format, in its
order and under its lock.

The records are made by the real ``host-local`` plugin (Debian's containernetworking-plugins)
in a directory of the test's own, so a change in the plugin's format fails here. Drones no
longer run the plugin, but one of an older version on the same host still may."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sailplane.errors import RuntimeFailure
from sailplane.runtime.address_book import AddressBook
from sailplane.runtime.bridge_network import BridgeNetwork
from sailplane.runtime.veth import IFNAME

NETWORK = "sp-test-book"
SUBNET = "10.251.0.0/24"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")  # Debian's, upstream's


def host_local() -> str:
    for directory in CNI_BIN_DIRS:
        if os.path.exists(f"{directory}/host-local"):
            return f"{directory}/host-local"
    pytest.fail("the CNI plugins are missing (apt-get install containernetworking-plugins)")


def plugin(data_dir: Path, command: str, container_id: str) -> subprocess.Popen[bytes]:
    """host-local alone (it only keeps addresses: no namespace is touched)."""
    config = {"cniVersion": "1.0.0", "name": NETWORK, "type": "host-local",
              "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                       "dataDir": str(data_dir)}}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": "/run/netns/sp-test-none",  # required, never opened
           "CNI_IFNAME": IFNAME, "CNI_PATH": os.path.dirname(host_local()),
           "PATH": os.environ.get("PATH", "/usr/bin")}
    process = subprocess.Popen([host_local()], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(json.dumps(config).encode())
    process.stdin.close()
    return process


def reserve(data_dir: Path, container_id: str) -> str:
    process = plugin(data_dir, "ADD", container_id)
    assert process.stdout is not None and process.stderr is not None
    out = process.stdout.read()
    assert process.wait(timeout=30) == 0, process.stderr.read()
    return str(json.loads(out)["ips"][0]["address"].split("/")[0])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path  # removed by pytest, whatever happens


def test_release_frees_the_records_of_the_ids_given_and_nothing_else(data_dir: Path) -> None:
    held = {cid: reserve(data_dir, cid) for cid in ("c-one", "c-two", "c-three")}
    book = AddressBook(data_dir / NETWORK, IFNAME)
    assert book.holders() == {ip: cid for cid, ip in held.items()}

    freed = book.release(["c-one", "c-two", "c-unknown"])

    assert freed == {held["c-one"]: "c-one", held["c-two"]: "c-two"}
    assert book.holders() == {held["c-three"]: "c-three"}
    # The plugin still knows its book: it frees the last one and reserves again.
    process = plugin(data_dir, "DEL", "c-three")
    assert process.wait(timeout=30) == 0
    assert book.holders() == {}
    assert reserve(data_dir, "c-four")


def test_release_frees_the_old_format_but_not_another_interface(data_dir: Path) -> None:
    directory = data_dir / NETWORK
    directory.mkdir()
    (directory / "10.251.0.7").write_text("c-old")  # an older host-local: the id alone
    (directory / "10.251.0.8").write_text("c-other\r\neth1")
    book = AddressBook(directory, IFNAME)

    assert book.release(["c-old", "c-other"]) == {"10.251.0.7": "c-old"}
    assert book.holders() == {"10.251.0.8": "c-other"}


def test_release_holds_the_plugins_lock(data_dir: Path) -> None:
    """A reservation started while a release holds the lock waits for it."""
    reserve(data_dir, "c-first")
    book = AddressBook(data_dir / NETWORK, IFNAME)
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with book._locked():
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(30)
        process = plugin(data_dir, "ADD", "c-waiting")
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)  # blocked on the lock, not merely slow: see below
    finally:
        leave.set()
        holder.join()
    assert process.wait(timeout=30) == 0
    assert "c-waiting" in book.holders().values()


def test_detach_without_a_namespace_frees_many_in_few_passes(data_dir: Path) -> None:
    """Concurrent detaches of containers whose namespaces are gone all free their address
    (one pass takes every release queued meanwhile), with no CNI process."""
    ids = [f"c-{i}" for i in range(40)]
    for cid in ids:
        reserve(data_dir, cid)
    network = BridgeNetwork(NETWORK, "sp-test-book0", SUBNET)
    network.book = AddressBook(data_dir / NETWORK, IFNAME)
    passes = []
    release = network.book.release

    def counted(container_ids: object) -> dict[str, str]:
        passes.append(container_ids)
        return release(container_ids)  # type: ignore[arg-type]

    network.book.release = counted  # type: ignore[method-assign]

    async def detach_all() -> None:
        await asyncio.gather(*(network.detach(cid, "/run/netns/sp-gone") for cid in ids))

    asyncio.run(detach_all())
    assert network.holders() == {}
    assert 1 <= len(passes) < len(ids)


def test_reserve_follows_the_plugins_order_and_format(data_dir: Path) -> None:
    """Reservations here and by the plugin, interleaved, take the addresses the plugin alone
    would take, one after the other, in records the plugin frees."""
    book = AddressBook(data_dir / NETWORK, IFNAME)
    subnet = ipaddress.IPv4Network(SUBNET)
    got = [reserve(data_dir, "c-p1"), str(book.reserve("c-b1", subnet)),
           reserve(data_dir, "c-p2"), str(book.reserve("c-b2", subnet))]
    assert got == ["10.251.0.2", "10.251.0.3", "10.251.0.4", "10.251.0.5"]
    assert (data_dir / NETWORK / "10.251.0.3").read_bytes() == b"c-b1\r\neth0"

    process = plugin(data_dir, "DEL", "c-b1")  # the plugin frees a record made here
    assert process.wait(timeout=30) == 0
    assert "c-b1" not in book.holders().values()
    assert str(book.reserve("c-b3", subnet)) == "10.251.0.6"  # after the last, not the hole


def test_reserve_again_gives_the_same_address(data_dir: Path) -> None:
    book = AddressBook(data_dir / NETWORK, IFNAME)
    subnet = ipaddress.IPv4Network(SUBNET)
    first = book.reserve("c-same", subnet)
    book.reserve("c-else", subnet)
    assert book.reserve("c-same", subnet) == first
    assert list(book.holders().values()).count("c-same") == 1
    # Told the id is new, the book is not searched: a second address, freed with the first.
    assert book.reserve("c-same", subnet, again=False) != first
    assert book.release(["c-same"]).keys() == {str(first), "10.251.0.4"}


def test_reserve_wraps_around_and_skips_what_is_held(data_dir: Path) -> None:
    """A /29: the network (.0), the gateway (.1) and the broadcast (.7) are never given."""
    book = AddressBook(data_dir / NETWORK, IFNAME)
    subnet = ipaddress.IPv4Network("10.251.0.0/29")
    given_out = [str(book.reserve(f"c-{i}", subnet)) for i in range(5)]
    assert given_out == [f"10.251.0.{n}" for n in range(2, 7)]
    with pytest.raises(RuntimeFailure, match="no address left"):
        book.reserve("c-full", subnet)
    book.release(["c-3", "c-1"])  # frees .5 and .3
    assert str(book.reserve("c-next", subnet)) == "10.251.0.3"  # wrapped past .6
    assert str(book.reserve("c-last", subnet)) == "10.251.0.5"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=40))
def test_reserve_never_gives_one_address_twice(steps: list[tuple[bool, int]]) -> None:
    """Any mix of reservations and releases of ten ids on a /28 (13 addresses to give):
    each id holds at most one address, never a reserved one, and keeps it until freed."""
    subnet = ipaddress.IPv4Network("10.251.1.0/28")
    special = {subnet.network_address, subnet.network_address + 1, subnet.broadcast_address}
    with tempfile.TemporaryDirectory() as directory:
        book = AddressBook(Path(directory), IFNAME)
        held: dict[str, ipaddress.IPv4Address] = {}
        for reserving, n in steps:
            cid = f"c-{n}"
            if reserving:
                address = book.reserve(cid, subnet)
                assert address in subnet and address not in special
                assert held.setdefault(cid, address) == address
            else:
                book.release([cid])
                held.pop(cid, None)
            assert book.holders() == {str(a): c for c, a in held.items()}
