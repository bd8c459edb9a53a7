"""Connecting a network namespace to a Linux bridge with a veth pair, in the drone's process.

This is what CNI's ``bridge`` plugin (with ``host-local`` addresses, ``isGateway``) did for a
backend, done with netlink from this process instead of two processes per backend: the bridge
is made if missing (up, with the subnet's first address as the gateway, and IPv4 forwarding
on); a veth pair is made with its host end on the bridge and up and its peer made right in the
namespace as ``eth0``; ``eth0`` gets an address from the address book shared with the plugin
(``address_book.py``), is brought up and routes everything through the gateway.

The messages are pyroute2's, sent on plain netlink sockets: its ``IPRoute`` costs about
0.4 ms a request here (an asyncio loop turned for each), several times the kernel's work, and
its way into a namespace forks a helper process. Requests act on the namespace of the socket
they are sent on, which is the namespace of the thread that opened it; so a thread of its own
``setns``\\es into the namespace, opens a socket, looks up ``eth0`` and ends: nothing else ever
runs in another namespace. The requests for one namespace go in one write (the kernel handles
them in order) and their acknowledgements are read together. Every call here blocks (a few
milliseconds): run it in a worker thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import hashlib
import importlib
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sailplane.errors import RuntimeFailure
from sailplane.runtime.address_book import AddressBook

IFNAME = "eth0"  # the backend's end, in every backend
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
_CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_IFF_UP = 0x1
_NET_ADDR_SET = "3"  # addr_assign_type of an address set from user space
_LOOPBACK_INDEX = 1  # lo's, in every network namespace
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3  # what ``ip route add`` and the plugin give a route
_RTN_UNICAST = 1
_NLMSG_ERROR = 2
# From linux/netlink.h and linux/rtnetlink.h.
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_NEWROUTE = 16, 17, 20, 24
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
_NEW = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
_SET = _NLM_F_REQUEST | _NLM_F_ACK

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
        with _rtnl() as rtnl:
            again = _add_pair(rtnl, bridge, subnet, host, ns_fd)
            try:
                address = book.reserve(container_id, subnet, again=again)
                try:
                    _configure_inside(ns_fd, address, subnet)
                except BaseException:
                    book.release([container_id])
                    raise
            except BaseException:
                with contextlib.suppress(OSError):
                    _delete_link(rtnl, host)
                raise
    except OSError as exc:
        raise RuntimeFailure(f"cannot connect {netns} to bridge {bridge}: {exc}") from exc
    finally:
        os.close(ns_fd)
    return address


def disconnect(container_id: str) -> bool:
    """Delete the id's host end, and so its peer; whether there was one."""
    try:
        with _rtnl() as rtnl:
            return _delete_link(rtnl, host_ifname(container_id))
    except OSError as exc:
        raise RuntimeFailure(f"cannot delete {host_ifname(container_id)}: {exc}") from exc


def delete_bridge(bridge: str) -> None:
    """Delete the bridge (its ports, if any, are let go); none there is fine."""
    try:
        with _rtnl() as rtnl:
            _delete_link(rtnl, bridge)
    except OSError as exc:
        raise RuntimeFailure(f"cannot delete bridge {bridge}: {exc}") from exc


def _add_pair(rtnl: socket.socket, bridge: str, subnet: ipaddress.IPv4Network, host: str,
              ns_fd: int) -> bool:
    """Make the pair, host end on the bridge and up, peer in the namespace; whether the id
    had a pair already (an earlier attach: replaced)."""
    pair = _message("ifinfmsg", index=0, flags=_IFF_UP, change=_IFF_UP, attrs=[
        ("IFLA_IFNAME", host), ("IFLA_MASTER", _bridge_index(rtnl, bridge, subnet)),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
                ("IFLA_IFNAME", IFNAME), ("IFLA_NET_NS_FD", ns_fd)]})]}),
        ]}),
    ])
    try:
        _request(rtnl, (pair, _RTM_NEWLINK, _NEW))
        return False
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    _delete_link(rtnl, host)  # its peer goes with it
    _request(rtnl, (pair, _RTM_NEWLINK, _NEW))
    return True


def _bridge_index(rtnl: socket.socket, bridge: str, subnet: ipaddress.IPv4Network) -> int:
    """The bridge's index; made first if missing or not up (it is brought up last, so one up
    is complete), by this drone or by another at once. Forwarding on, as the plugin left it.

    The bridge gets a fixed MAC address (:func:`bridge_mac`). Left to itself, a Linux bridge
    takes the lowest MAC of its ports and changes it as veths come and go; every backend that
    had cached the gateway's old one then sent its packets (answers to the drone's and the
    proxy's requests included) to an address no longer there, until its ARP entry went stale:
    requests hung for seconds under backend churn. A bridge made before (by the CNI plugin or
    an older drone) gets its fixed address on the next attach."""
    with open(IP_FORWARD) as forward:
        if forward.read().strip() != "1":
            with open(IP_FORWARD, "w") as forward_on:
                forward_on.write("1")
    sysfs = Path("/sys/class/net") / bridge
    with contextlib.suppress(OSError, ValueError):
        if int((sysfs / "flags").read_text(), 16) & _IFF_UP:
            index = int((sysfs / "ifindex").read_text())
            if (sysfs / "addr_assign_type").read_text().strip() != _NET_ADDR_SET:
                _request(rtnl, (_message("ifinfmsg", index=index, attrs=[
                    ("IFLA_ADDRESS", bridge_mac(bridge))]), _RTM_NEWLINK, _SET))
            return index
    # Without NLM_F_EXCL: one made meanwhile by another drone is no error.
    _request(rtnl, (_message("ifinfmsg", attrs=[
        ("IFLA_IFNAME", bridge), ("IFLA_ADDRESS", bridge_mac(bridge)),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]}),
    ]), _RTM_NEWLINK, _NEW & ~_NLM_F_EXCL))
    index = socket.if_nametoindex(bridge)
    with contextlib.suppress(FileExistsError):
        _request(rtnl, (_address(index, gateway(subnet), subnet), _RTM_NEWADDR, _NEW))
    _request(rtnl, (_message("ifinfmsg", index=index, flags=_IFF_UP, change=_IFF_UP),
                    _RTM_NEWLINK, _SET))
    return index


def bridge_mac(bridge: str) -> str:
    """The bridge's fixed MAC address: locally administered, unicast, from its name, so a
    bridge made again has the same one and no backend's cached entry goes wrong."""
    digest = hashlib.sha256(bridge.encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def _configure_inside(ns_fd: int, address: ipaddress.IPv4Address,
                      subnet: ipaddress.IPv4Network) -> None:
    """``eth0`` up with ``address`` and the default route via the gateway. ``lo`` is brought
    up too: both namespaces' makers do it already, and again costs nothing in the batch."""
    inside, eth0 = _socket_in(ns_fd)
    with inside:
        _request(
            inside,
            (_message("ifinfmsg", index=_LOOPBACK_INDEX, flags=_IFF_UP, change=_IFF_UP),
             _RTM_NEWLINK, _SET),
            (_message("ifinfmsg", index=eth0, flags=_IFF_UP, change=_IFF_UP), _RTM_NEWLINK, _SET),
            (_address(eth0, address, subnet), _RTM_NEWADDR, _NEW),
            (_message("rtmsg", family=socket.AF_INET, dst_len=0, table=_RT_TABLE_MAIN,
                      proto=_RTPROT_BOOT, scope=0, type=_RTN_UNICAST,
                      attrs=[("RTA_GATEWAY", str(gateway(subnet)))]), _RTM_NEWROUTE, _NEW),
        )


def _address(index: int, address: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network) -> Any:
    return _message("ifaddrmsg", family=socket.AF_INET, prefixlen=subnet.prefixlen, index=index,
                    attrs=[("IFA_LOCAL", str(address)), ("IFA_ADDRESS", str(address)),
                           ("IFA_BROADCAST", str(subnet.broadcast_address))])


def _delete_link(rtnl: socket.socket, name: str) -> bool:
    """Delete the interface ``name``; whether there was one."""
    try:
        _request(rtnl, (_message("ifinfmsg", attrs=[("IFLA_IFNAME", name)]), _RTM_DELLINK, _SET))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise
    return True


_MESSAGE_KINDS = ("ifinfmsg", "ifaddrmsg", "rtmsg")


def load_messages() -> None:
    """Import the message classes now, so that the first wiring does not pay pyroute2's
    import (see :func:`_message`)."""
    for kind in _MESSAGE_KINDS:
        importlib.import_module(f"pyroute2.netlink.rtnl.{kind}")


def _message(kind: str, **fields: Any) -> Any:
    """A pyroute2 message of class ``kind`` (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``) with
    ``fields``. The class is imported on first use: any pyroute2 import runs its package's
    ``__init__``, which loads every protocol it knows (about 150 ms here), and every CLI run
    imports this module (through the runtimes' default subnets) without wiring anything. A
    drone pays it once, at its start (``BridgeNetwork.prepare``)."""
    message = getattr(importlib.import_module(f"pyroute2.netlink.rtnl.{kind}"), kind)()
    for key, value in fields.items():
        message[key] = value
    return message


def _request(rtnl: socket.socket, *requests: tuple[Any, int, int]) -> None:
    """Send the requests (message, type, flags) in one write and read an acknowledgement for
    each; OSError with the first failure's errno. The socket hears nothing else: it joined no
    group, so all it receives are the answers to its own requests, in order."""
    out = b""
    for sequence, (message, kind, flags) in enumerate(requests, start=1):
        message["header"]["type"] = kind
        message["header"]["flags"] = flags
        message["header"]["sequence_number"] = sequence
        message.encode()
        out += message.data
    rtnl.send(out)
    failures: dict[int, int] = {}
    answered = 0
    while answered < len(requests):
        data = rtnl.recv(65536)
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _, sequence, _ = _NLMSG_HEADER.unpack_from(data, offset)
            if kind == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)
                if code:
                    failures[sequence] = -code
                answered += 1
            offset += max((length + 3) & ~3, _NLMSG_HEADER.size)
    if failures:
        code = failures[min(failures)]
        raise OSError(code, f"{os.strerror(code)} (netlink request {min(failures)} "
                            f"of {len(requests)})")


@contextlib.contextmanager
def _rtnl() -> Iterator[socket.socket]:
    """A route netlink socket in this thread's namespace (the host's), closed after."""
    rtnl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
    with rtnl:
        rtnl.bind((0, 0))
        yield rtnl


def _socket_in(ns_fd: int) -> tuple[socket.socket, int]:
    """A route netlink socket in the namespace ``ns_fd`` and the index of its ``eth0``, from a
    thread that enters the namespace for them and ends right after."""
    done: concurrent.futures.Future[tuple[socket.socket, int]] = concurrent.futures.Future()

    def target() -> None:
        try:
            if _libc.setns(ns_fd, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns: {os.strerror(code)}")
            rtnl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
            try:
                rtnl.bind((0, 0))
                done.set_result((rtnl, socket.if_nametoindex(IFNAME)))
            except BaseException:
                rtnl.close()
                raise
        except BaseException as exc:
            done.set_exception(exc)

    thread = threading.Thread(target=target, name="netns socket")
    thread.start()
    thread.join()
    return done.result()
