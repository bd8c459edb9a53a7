"""Connecting a network namespace to a Linux bridge with a veth pair, in the drone's process.

This is what CNI's ``bridge`` plugin (with ``host-local`` addresses, ``isGateway``) did for a
backend, done with netlink from this process instead of two processes per backend: the bridge
is made if missing (up, with the subnet's first address as the gateway, and IPv4 forwarding
on); a veth pair is made with its host end on the bridge and up and its peer made right in the
namespace as ``eth0``; ``eth0`` gets an address from the address book shared with the plugin
(``address_book.py``), is brought up and routes everything through the gateway.

Netlink requests act on the namespace of the socket they are sent on, which is the namespace
of the thread that opened it. pyroute2's own way into a namespace forks a helper process to
open that socket, so a thread of its own ``setns``\\es into the namespace, opens the socket and
ends: nothing else ever runs in another namespace, and the requests themselves are sent from
the calling thread. Every call here blocks (a few milliseconds): run it in a worker thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import hashlib
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sailplane.errors import RuntimeFailure
from sailplane.runtime.address_book import AddressBook

IFNAME = "eth0"  # the backend's end, in every backend
_CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_IFF_UP = 0x1
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


def host_ifname(container_id: str) -> str:
    """The host end's name: ``veth`` and 11 hex digits of a hash of the id (15 characters,
    the kernel's limit; the plugin's were random, these are found again from the id alone)."""
    return "veth" + hashlib.sha256(container_id.encode()).hexdigest()[:11]


def gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address + 1


def connect(bridge: str, subnet: ipaddress.IPv4Network, book: AddressBook,
            container_id: str, netns: str) -> ipaddress.IPv4Address:
    """Connect the namespace at path ``netns`` to ``bridge`` for ``container_id``; the address
    it got. Connecting the same id again replaces its pair and keeps its address. On a failure
    (RuntimeFailure) nothing of this call is left: no pair, no address held by the id."""
    try:
        ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeFailure(f"cannot open network namespace {netns}: {exc.strerror}") from exc
    host = host_ifname(container_id)
    try:
        with _netlink() as ipr:
            bridge_index = _ensure_bridge(ipr, bridge, subnet)
            address = book.reserve(container_id, subnet)
            try:
                _delete_link(ipr, host)  # an earlier attach of this id: its peer goes too
                ipr.link("add", ifname=host, kind="veth", master=bridge_index, state="up",
                         peer={"ifname": IFNAME, "net_ns_fd": ns_fd})
                with _netlink(_socket_in(ns_fd)) as inside:
                    _configure_inside(inside, address, subnet)
            except BaseException:
                with contextlib.suppress(NetlinkError, OSError):
                    _delete_link(ipr, host)
                book.release([container_id])
                raise
    except NetlinkError as exc:
        raise RuntimeFailure(f"cannot connect {netns} to bridge {bridge}: "
                             f"{os.strerror(exc.code)}") from exc
    except OSError as exc:
        raise RuntimeFailure(f"cannot connect {netns} to bridge {bridge}: {exc}") from exc
    finally:
        os.close(ns_fd)
    return address


def disconnect(container_id: str) -> bool:
    """Delete the id's host end, and so its peer; whether there was one."""
    try:
        with _netlink() as ipr:
            return _delete_link(ipr, host_ifname(container_id))
    except NetlinkError as exc:
        raise RuntimeFailure(f"cannot delete {host_ifname(container_id)}: "
                             f"{os.strerror(exc.code)}") from exc


def delete_bridge(bridge: str) -> None:
    """Delete the bridge (its ports, if any, are let go); none there is fine."""
    try:
        with _netlink() as ipr:
            _delete_link(ipr, bridge)
    except NetlinkError as exc:
        raise RuntimeFailure(f"cannot delete bridge {bridge}: {os.strerror(exc.code)}") from exc


def _ensure_bridge(ipr: Any, bridge: str, subnet: ipaddress.IPv4Network) -> int:
    """The bridge's index, made (by this drone or another at once) if missing, up, with the
    gateway address, and forwarding on, as the plugin leaves them."""
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        with contextlib.suppress(NetlinkError):  # EEXIST: another drone made it meanwhile
            ipr.link("add", ifname=bridge, kind="bridge")
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            raise RuntimeFailure(f"cannot make bridge {bridge}")
    index: int = found[0]
    try:
        ipr.addr("add", index=index, address=str(gateway(subnet)), prefixlen=subnet.prefixlen)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    ipr.link("set", index=index, state="up")
    with open(IP_FORWARD) as forward:
        on = forward.read().strip() == "1"
    if not on:
        with open(IP_FORWARD, "w") as forward:
            forward.write("1")
    return index


def _configure_inside(inside: Any, address: ipaddress.IPv4Address,
                      subnet: ipaddress.IPv4Network) -> None:
    """``eth0`` up with ``address`` and the default route via the gateway; ``lo`` up too (the
    namespace's maker does it; a namespace that comes without it gets it here)."""
    lo = inside.link("get", ifname="lo")[0]
    if not lo["flags"] & _IFF_UP:
        inside.link("set", index=lo["index"], state="up")
    index = inside.link_lookup(ifname=IFNAME)[0]
    inside.addr("add", index=index, address=str(address), prefixlen=subnet.prefixlen)
    inside.link("set", index=index, state="up")
    inside.route("add", dst="0.0.0.0/0", gateway=str(gateway(subnet)))


def _delete_link(ipr: Any, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise
    return True


@contextlib.contextmanager
def _netlink(sock: socket.socket | None = None) -> Iterator[Any]:
    """An RTNL connection on ``sock`` (default: a new one in this thread's namespace), closed
    after. It hears no broadcasts (``groups=0``): only the answers to its own requests."""
    try:
        ipr = IPRoute(groups=0, use_socket=sock)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    try:
        yield ipr
    finally:
        ipr.close()


def _socket_in(ns_fd: int) -> socket.socket:
    """A netlink socket in the namespace ``ns_fd``, opened by a thread that enters it and ends
    right after, so no thread of the drone stays in or runs anything else in the namespace."""
    done: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()

    def target() -> None:
        try:
            if _libc.setns(ns_fd, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns: {os.strerror(code)}")
            done.set_result(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE))
        except BaseException as exc:
            done.set_exception(exc)

    thread = threading.Thread(target=target, name="netns socket")
    thread.start()
    thread.join()
    return done.result()
