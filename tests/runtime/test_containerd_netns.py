"""containerd backends' network namespaces: made in the drone's process (``netns.py``) and kept
ready on the ``sp-ctr0`` bridge by a pool (``netns_pool.py``). Real namespaces, the real
bridge and veth pairs; everything made is deleted afterwards, the bridge too if it was not
there before."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from sailplane.runtime.containerd.netns import create_netns, delete_netns
from sailplane.runtime.containerd.netns_pool import NetnsPool, pool_prefix
from sailplane.runtime.containerd.network import (
    NETNS_DIR,
    NamespaceNetwork,
    bridge_exists,
    remove_network,
)

FILL_WITHIN_SECONDS = 30.0
pytestmark = pytest.mark.containerd


def net_inode(path: str) -> int:
    return os.stat(path).st_ino


def lo_flags(name: str) -> list[str]:
    shown = subprocess.run(["ip", "-n", name, "-j", "link", "show", "lo"],
                           capture_output=True, text=True, check=True)
    flags: list[str] = json.loads(shown.stdout)[0]["flags"]
    return flags


def listed_by_ip() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.split()]


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Namespace names for a test, each deleted afterwards whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        delete_netns(str(NETNS_DIR / name))


def fresh(names: list[str]) -> str:
    name = f"sptest-{uuid.uuid4().hex[:10]}"
    names.append(name)
    return name


def test_a_namespace_made_in_process_is_a_new_one_with_lo_up(names: list[str]) -> None:
    name = fresh(names)
    path = str(NETNS_DIR / name)
    ours, threads = os.readlink("/proc/thread-self/ns/net"), threading.active_count()
    create_netns(path)
    assert net_inode(path) != net_inode("/proc/self/ns/net")  # the drone's: the host's
    assert "UP" in lo_flags(name)
    assert name in listed_by_ip()
    # The drone's thread stayed in its namespace; the one that made it is gone.
    assert os.readlink("/proc/thread-self/ns/net") == ours
    assert threading.active_count() == threads
    delete_netns(path)
    assert not os.path.exists(path)
    assert name not in listed_by_ip()


def test_makings_at_once_are_each_a_namespace_of_their_own(names: list[str]) -> None:
    paths = [str(NETNS_DIR / fresh(names)) for _ in range(8)]
    threads = [threading.Thread(target=create_netns, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    inodes = {net_inode(path) for path in paths}
    assert len(inodes) == len(paths)
    assert net_inode("/proc/self/ns/net") not in inodes


def test_ip_and_the_drone_make_and_delete_each_other_s_namespaces(names: list[str]) -> None:
    by_ip, by_us = fresh(names), fresh(names)
    subprocess.run(["ip", "netns", "add", by_ip], check=True)
    create_netns(str(NETNS_DIR / by_us))
    delete_netns(str(NETNS_DIR / by_ip))
    subprocess.run(["ip", "netns", "delete", by_us], check=True)
    assert by_ip not in listed_by_ip()
    assert by_us not in listed_by_ip()
    assert not os.path.exists(NETNS_DIR / by_us)


def test_an_existing_namespace_is_refused_and_left_alone(names: list[str]) -> None:
    name = fresh(names)
    path = str(NETNS_DIR / name)
    create_netns(path)
    before = net_inode(path)
    with pytest.raises(FileExistsError):
        create_netns(path)
    assert net_inode(path) == before
    assert "UP" in lo_flags(name)


def test_a_making_that_fails_leaves_nothing(names: list[str]) -> None:
    existing = fresh(names)
    create_netns(str(NETNS_DIR / existing))
    before = set(os.listdir(NETNS_DIR))
    ours = os.readlink("/proc/thread-self/ns/net")
    with pytest.raises(OSError):
        create_netns(str(NETNS_DIR / ("x" * 300)))  # too long a name
    with pytest.raises(OSError):
        create_netns(str(NETNS_DIR / existing / "x"))  # beneath a namespace, not a directory
    assert set(os.listdir(NETNS_DIR)) == before
    assert os.readlink("/proc/thread-self/ns/net") == ours


# -- the pool, on the real bridge -------------------------------------------------------------


@pytest.fixture
def network() -> Iterator[NamespaceNetwork]:
    had_bridge = bridge_exists()
    yield NamespaceNetwork()
    if not had_bridge:  # and its firewall rules, made by the first attach
        asyncio.run(remove_network())


@pytest.fixture
def owners(network: NamespaceNetwork) -> Iterator[list[str]]:
    """Drone ids for a test; whatever their pools hold is deleted afterwards."""
    made: list[str] = []
    yield made
    for owner in made:
        asyncio.run(NetnsPool(network, owner, size=0).sweep(set()))


def new_owner(owners: list[str]) -> str:
    owner = f"test-{uuid.uuid4().hex[:10]}"
    owners.append(owner)
    return owner


def held(network: NamespaceNetwork, owner: str) -> tuple[set[str], set[str]]:
    """The namespaces and the address holders of ``owner``'s pool."""
    prefix = pool_prefix(owner)
    return ({n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)},
            {n for n in network.bridge.holders().values() if n.startswith(prefix)})


async def filled(pool: NetnsPool) -> None:
    deadline = time.monotonic() + FILL_WITHIN_SECONDS
    while len(pool.ready()) < pool.size:
        assert time.monotonic() < deadline, "the pool did not fill"
        await asyncio.sleep(0.01)


def test_the_pool_wires_namespaces_ahead_and_hands_each_out_once(
    network: NamespaceNetwork, owners: list[str],
) -> None:
    owner = new_owner(owners)

    async def scenario() -> None:
        pool = NetnsPool(network, owner, size=2)
        try:
            pool.start()
            await filled(pool)
            ready = pool.ready()
            assert held(network, owner) == (ready, ready)
            taken = [await pool.take() for _ in range(3)]  # the third made at once, or refilled
            assert len({w.name for w in taken}) == 3
            assert {w.name for w in taken[:2]} == ready
            book = network.bridge.holders()
            for wired in taken:
                assert wired.name.startswith(pool.prefix)
                assert book[wired.address] == wired.name
                path = network.netns_path(wired.name)
                assert net_inode(path) != net_inode("/proc/self/ns/net")
                assert "UP" in lo_flags(wired.name)
                assert "eth0" in subprocess.run(["ip", "-n", wired.name, "-br", "addr"],
                                                capture_output=True, text=True).stdout
            await filled(pool)  # refilled in the background
            assert not pool.unused() & {w.name for w in taken}
            for wired in taken:
                await pool.release(wired.name)
            assert held(network, owner) == (pool.unused(), pool.unused())
        finally:
            await pool.close()
        assert held(network, owner) == (set(), set())

    asyncio.run(scenario())


def test_an_empty_pool_makes_a_namespace_at_once(network: NamespaceNetwork,
                                                 owners: list[str]) -> None:
    owner = new_owner(owners)

    async def scenario() -> None:
        pool = NetnsPool(network, owner, size=0)
        wired = await pool.take()
        assert held(network, owner) == ({wired.name}, {wired.name})
        assert pool.unused() == set()
        await pool.release(wired.name)
        await pool.close()
        assert held(network, owner) == (set(), set())

    asyncio.run(scenario())


def test_a_restarted_drone_deletes_what_its_earlier_run_left_and_keeps_what_is_used(
    network: NamespaceNetwork, owners: list[str],
) -> None:
    owner, neighbour = new_owner(owners), new_owner(owners)

    async def earlier_run() -> tuple[str, str]:
        """A backend's namespace, one taken by a start that never made its container, two
        ready ones, a half-made one (no address), an address whose namespace is gone; then
        the drone dies (nothing closed: the end of the loop cancels the pool's filler)."""
        pool = NetnsPool(network, owner, size=2)
        pool.start()
        await filled(pool)
        used = await pool.take()
        await pool.take()
        await filled(pool)
        create_netns(network.netns_path(f"{pool.prefix}halfmade"))
        orphan = f"{pool.prefix}orphan"
        await network.attach(orphan)
        delete_netns(network.netns_path(orphan))
        theirs = await NetnsPool(network, neighbour, size=0).take()
        return used.name, theirs.name

    used, theirs = asyncio.run(earlier_run())

    async def restarted() -> None:
        pool = NetnsPool(network, owner, size=2)
        assert await pool.sweep({used}) == 5
        assert held(network, owner) == ({used}, {used})
        assert held(network, neighbour) == ({theirs}, {theirs})  # another drone's: kept
        await pool.release(used)
        assert held(network, owner) == (set(), set())

    asyncio.run(restarted())


@pytest.mark.parametrize("delay", [0.0, 0.0005, 0.002, 0.005, 0.01])
def test_a_start_cancelled_while_its_namespace_is_made_leaves_it_to_the_pool(
    network: NamespaceNetwork, owners: list[str], delay: float,
) -> None:
    owner = new_owner(owners)

    async def scenario() -> None:
        pool = NetnsPool(network, owner, size=0)
        await pool.release((await pool.take()).name)  # the firewall is in place: only a making
        taking = asyncio.create_task(pool.take())
        await asyncio.sleep(delay)
        taking.cancel()
        try:
            wired = await taking
        except asyncio.CancelledError:
            deadline = time.monotonic() + FILL_WITHIN_SECONDS
            while not pool.ready():  # the making ends, and what it made is ready
                assert time.monotonic() < deadline, "the cancelled making did not end"
                await asyncio.sleep(0.005)
            [name] = pool.ready()
            assert held(network, owner) == ({name}, {name})
            assert (await pool.take()).name == name  # handed out once, like any ready one
            await pool.release(name)
        else:
            await pool.release(wired.name)  # done before the cancel came
        await pool.close()
        assert held(network, owner) == (set(), set())

    asyncio.run(scenario())


def test_closing_waits_for_a_cancelled_start_s_making_and_deletes_it(
    network: NamespaceNetwork, owners: list[str],
) -> None:
    owner = new_owner(owners)

    async def scenario() -> None:
        pool = NetnsPool(network, owner, size=0)
        taking = asyncio.create_task(pool.take())
        await asyncio.sleep(0.002)
        taking.cancel()
        await asyncio.gather(taking, return_exceptions=True)
        await pool.close()
        assert held(network, owner) == (set(), set())

    asyncio.run(scenario())
