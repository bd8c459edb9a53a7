"""The backends' firewall rules (``sailplane.runtime.firewall``), as data: no root needed.

The rules are exercised for real by tests/integration/test_backend_isolation.py."""

from __future__ import annotations

import pytest

from sailplane.runtime.firewall import DENIED_BY_DEFAULT, EgressPolicy, chains, jumps, rules


def test_replies_pass_everything_else_from_a_backend_to_the_host_is_dropped():
    input_chain, _ = chains("sp0")
    assert rules("sp0", EgressPolicy())[input_chain] == [
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-j", "DROP"],
    ]


def test_forwarding_allows_the_allow_list_then_drops_other_backends_and_private_ranges():
    _, forward_chain = chains("sp0")
    forward = rules("sp0", EgressPolicy(allow=("10.1.2.0/24",)))[forward_chain]
    assert forward[0] == ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    assert forward[1] == ["-d", "10.1.2.0/24", "-j", "ACCEPT"]  # before any drop
    assert forward[2] == ["-o", "sp0", "-j", "DROP"]
    assert forward[3:-1] == [["-d", cidr, "-j", "DROP"] for cidr in DENIED_BY_DEFAULT]
    assert forward[-1] == ["-j", "ACCEPT"]  # the public internet


@pytest.mark.parametrize("cidr", ["10.0.0.300/8", "fd00::/8", "example.com", ""])
def test_an_egress_rule_that_is_not_an_ipv4_network_is_refused(cidr):
    with pytest.raises(ValueError, match="is not an IPv4 network"):
        EgressPolicy(allow=(cidr,))


def test_the_default_denies_the_private_loopback_and_link_local_ranges():
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
                 "169.254.0.0/16", "100.64.0.0/10"):
        assert cidr in DENIED_BY_DEFAULT


def test_every_chain_name_fits_iptables_and_jumps_name_the_bridge():
    for name in chains("sp-docker0"):
        assert len(name) <= 28
    assert all(rule[:2] in (["-i", "sp0"], ["-o", "sp0"]) for _, rule in jumps("sp0", "FORWARD"))
