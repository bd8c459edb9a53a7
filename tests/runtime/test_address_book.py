"""The address book frees what CNI's ``host-local`` reserved, in its format and under its lock.

The records are made by the real ``host-local`` plugin (Debian's containernetworking-plugins)
in a directory of the test's own, so a change in the plugin's format fails here."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from sailplane.runtime.address_book import AddressBook
from sailplane.runtime.bridge_network import CNI_BIN_DIRS, IFNAME, BridgeNetwork

NETWORK = "sp-test-book"
SUBNET = "10.251.0.0/24"


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
