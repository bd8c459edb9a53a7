"""Firewall rules that keep backends on a bridge away from the host and from each other.

Both runtimes put backends on a Linux bridge of Sailplane's own, wired by the drone
(``runtime/bridge_network.py``). For a bridge ``BR`` the drone installs, with ``iptables``::

    INPUT                 -i BR -j SP-IN-BR      backend -> any address of the host
    DOCKER-USER|FORWARD   -i BR -j SP-FWD-BR     backend -> anywhere else
    DOCKER-USER|FORWARD   -o BR, replies         -> ACCEPT
    nat POSTROUTING       -s SUBNET -j SP-NAT-BR  masquerade what leaves by another interface

    SP-IN-BR   replies (ESTABLISHED,RELATED) accepted; everything else dropped
    SP-FWD-BR  replies return; the operator's allow-list returns; another backend on BR is
               dropped; private, link-local, loopback and multicast ranges are dropped; the
               rest is accepted

So a backend answers the connections the drone and the proxy open to it (they are replies),
reaches no other backend and no service of the host (not even on the bridge's gateway
address), and reaches the public internet unless the operator denies it. ``FORWARD`` sees
traffic between two ports of one bridge only with ``br_netfilter``, which the drone loads.
Rules go into ``DOCKER-USER`` where Docker runs: Docker's own ``FORWARD`` rules come after it
and drop what they do not know.

:func:`rules` is pure (tested without root); :func:`install` is idempotent (the chains are
rebuilt, the jumps added once) and :func:`remove` takes everything out again. IPv4 only: the
bridges Sailplane makes have no IPv6 addresses.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from sailplane.errors import RuntimeFailure

log = logging.getLogger(__name__)

# Never reachable from a backend unless the operator allows a part of them.
DENIED_BY_DEFAULT = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4",
)
IPTABLES_TIMEOUT_SECONDS = 30
# One change at a time: threads of one drone, and drones (processes) of one host.
_lock = threading.Lock()
LOCK_FILE = "/run/lock/sailplane-firewall.lock"


@dataclass(frozen=True)
class EgressPolicy:
    """Where backends may connect to, besides answering: everything but ``deny``, and always
    ``allow`` (checked first; e.g. a database the operator wants backends to reach)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = field(default=DENIED_BY_DEFAULT)

    def __post_init__(self) -> None:
        for cidr in (*self.allow, *self.deny):
            try:
                ipaddress.IPv4Network(cidr)
            except ValueError as exc:
                raise ValueError(f"egress rule {cidr!r} is not an IPv4 network: {exc}") from exc


def chains(bridge: str) -> tuple[str, str]:
    """The input and forward chain names for a bridge (iptables allows 28 characters)."""
    return f"SP-IN-{bridge}", f"SP-FWD-{bridge}"


def nat_chain(bridge: str) -> str:
    return f"SP-NAT-{bridge}"


def rules(bridge: str, policy: EgressPolicy) -> dict[str, list[list[str]]]:
    """Every rule of the two chains, as iptables arguments after ``-A CHAIN``.

    >>> rules("sp0", EgressPolicy(deny=("10.0.0.0/8",)))["SP-IN-sp0"][-1]
    ['-j', 'DROP']
    """
    input_chain, forward_chain = chains(bridge)
    replies = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
    forward = [[*replies, "-j", "ACCEPT"]]
    forward += [["-d", cidr, "-j", "ACCEPT"] for cidr in policy.allow]
    forward.append(["-o", bridge, "-j", "DROP"])
    forward += [["-d", cidr, "-j", "DROP"] for cidr in policy.deny]
    forward.append(["-j", "ACCEPT"])
    return {input_chain: [[*replies, "-j", "ACCEPT"], ["-j", "DROP"]], forward_chain: forward}


def jumps(bridge: str, forward_parent: str) -> list[tuple[str, list[str]]]:
    """The rules that send a bridge's traffic into its chains: (parent chain, rule)."""
    input_chain, forward_chain = chains(bridge)
    return [("INPUT", ["-i", bridge, "-j", input_chain]),
            (forward_parent, ["-i", bridge, "-j", forward_chain]),
            (forward_parent, ["-o", bridge, "-m", "conntrack", "--ctstate",
                              "ESTABLISHED,RELATED", "-j", "ACCEPT"])]


def install(bridge: str, policy: EgressPolicy, *, masquerade: str) -> None:
    """Install (or rebuild) a bridge's chains and jumps; safe to call again at any time.

    ``masquerade``: the bridge's subnet, whose traffic leaving by another interface is
    masqueraded (``SP-NAT-{bridge}`` in the ``nat`` table): one rule for all its backends
    rather than one per backend."""
    with _exclusive():
        _install(bridge, policy)
        _install_masquerade(bridge, masquerade)


def _install_masquerade(bridge: str, subnet: str) -> None:
    chain = nat_chain(bridge)
    if not _chain_exists(chain, "nat"):
        _iptables("-t", "nat", "-N", chain)
    _iptables("-t", "nat", "-F", chain)
    _iptables("-t", "nat", "-A", chain, "-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE")
    jump = ["-s", subnet, "-j", chain]
    if not _iptables_ok("-t", "nat", "-C", "POSTROUTING", *jump):
        _iptables("-t", "nat", "-I", "POSTROUTING", "1", *jump)


def _install(bridge: str, policy: EgressPolicy) -> None:
    _load_br_netfilter()
    parent = "DOCKER-USER" if _chain_exists("DOCKER-USER") else "FORWARD"
    for chain, chain_rules in rules(bridge, policy).items():
        if not _chain_exists(chain):
            _iptables("-N", chain)
        _iptables("-F", chain)
        for rule in chain_rules:
            _iptables("-A", chain, *rule)
    for parent_chain, rule in jumps(bridge, parent):
        if not _iptables_ok("-C", parent_chain, *rule):
            _iptables("-I", parent_chain, "1", *rule)
    log.info("firewall: backends on %s isolated (chains %s)", bridge, ", ".join(chains(bridge)))


def remove(bridge: str) -> None:
    """Take a bridge's jumps and chains out; nothing installed is fine."""
    with _exclusive():
        _remove(bridge)


def _remove(bridge: str) -> None:
    for parent in ("INPUT", "FORWARD", "DOCKER-USER"):
        for _, rule in jumps(bridge, parent):
            while _iptables_ok("-D", parent, *rule):
                pass
    for chain in chains(bridge):
        if _chain_exists(chain):
            _iptables("-F", chain)
            _iptables("-X", chain)
    chain = nat_chain(bridge)
    if _chain_exists(chain, "nat"):
        listed = _run("-t", "nat", "-S", "POSTROUTING").stdout.splitlines()
        for line in listed:  # "-A POSTROUTING -s 10.213.0.0/16 -j SP-NAT-sp-ctr0"
            if line.split()[-2:] == ["-j", chain]:
                _iptables("-t", "nat", "-D", *line.split()[1:])
        _iptables("-t", "nat", "-F", chain)
        _iptables("-t", "nat", "-X", chain)


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    with _lock:
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def installed(bridge: str) -> bool:
    return all(_chain_exists(chain) for chain in chains(bridge))


def _iptables_binary() -> str:
    found = shutil.which("iptables")
    if found is None:
        raise RuntimeFailure("iptables is missing: backends cannot be isolated (install "
                             "Debian's iptables, a dependency of docker.io)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([_iptables_binary(), "-w", *args], capture_output=True, text=True,
                              timeout=IPTABLES_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeFailure(f"iptables {' '.join(args)} did not finish") from exc


def _iptables(*args: str) -> None:
    done = _run(*args)
    if done.returncode != 0:
        raise RuntimeFailure(f"iptables {' '.join(args)} failed: {done.stderr.strip()}")


def _iptables_ok(*args: str) -> bool:
    return _run(*args).returncode == 0


def _chain_exists(chain: str, table: str = "filter") -> bool:
    return _iptables_ok("-t", table, "-n", "-L", chain)


def _load_br_netfilter() -> None:
    """Without br_netfilter, traffic between two ports of one bridge skips iptables."""
    try:
        with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as flag:
            if flag.read().strip() == "1":
                return
    except FileNotFoundError:
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False,
                       timeout=IPTABLES_TIMEOUT_SECONDS)
    try:
        with open("/proc/sys/net/bridge/bridge-nf-call-iptables", "w") as flag:
            flag.write("1")
    except OSError as exc:
        log.warning("firewall: cannot enable bridge-nf-call-iptables (%s): backends on one "
                    "bridge can reach each other", exc)
