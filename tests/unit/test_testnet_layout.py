"""The network plan: addresses, exit policies versus target ports, expected flags."""

from __future__ import annotations

import ipaddress

from puretor.testnet import layout

PLAN = layout.NetworkPlan()


def _allows(policy: tuple[str, ...], port: int) -> bool:
    # First match wins, as in tor; our policies only use "*" addresses.
    for rule in policy:
        verb, target = rule.split(" ", 1)
        spec = target.split(":", 1)[1]
        if spec == "*" or port in {int(p) for p in spec.split(",")}:
            return verb == "accept"
    return False


def test_every_node_in_its_own_slash16() -> None:
    nets = [ipaddress.ip_network(f"{n.address}/16", strict=False) for n in PLAN.nodes]
    assert len(set(nets)) == len(PLAN.nodes)
    assert all(ipaddress.ip_address(n.address).is_loopback for n in PLAN.nodes)


def test_roles() -> None:
    assert len(PLAN.by_role("authority")) == 3
    assert len(PLAN.by_role("guard", "middle")) >= 4
    assert [n.nickname for n in PLAN.by_role("exit")] == ["exit1", "exit2"]
    assert sum(n.client_auth for n in PLAN.by_role("onion-service")) == 1


def test_exit_policies_match_the_target_ports() -> None:
    exit1, exit2 = PLAN.node("exit1"), PLAN.node("exit2")
    for port in (layout.HTTP_PORT, layout.HTTPS_PORT, layout.CLOSED_PORT):
        assert _allows(exit1.exit_policy, port) and _allows(exit2.exit_policy, port)
    for port in (layout.EXIT1_ONLY_HTTP_PORT, layout.ECHO_PORT):
        assert _allows(exit1.exit_policy, port) and not _allows(exit2.exit_policy, port)


def test_targets_are_public_to_tor_but_local_to_us() -> None:
    net = ipaddress.ip_network(layout.LOCAL_TARGET_NET)
    for ip in (layout.TARGET_IP, layout.ONION_PLAIN_BACKEND_IP, layout.ONION_AUTH_BACKEND_IP):
        addr = ipaddress.ip_address(ip)
        assert addr in net and not addr.is_loopback
    names = dict(layout.DNS_NAMES)
    assert names.pop(layout.INTERNAL_HOSTNAME) == layout.INTERNAL_HOSTNAME_IP
    assert set(names.values()) == {layout.TARGET_IP}


def test_internal_name_points_inside() -> None:
    # ClientDNSRejectInternalAddresses has an answer to reject.
    assert ipaddress.ip_address(layout.DNS_NAMES[layout.INTERNAL_HOSTNAME]).is_loopback


def test_dual_stack_relays() -> None:
    """The authorities and two guards have an IPv6 ORPort; guard3 has not: a client with
    ClientUseIPv4 0 has guards to use, and one it must avoid. The IPv6 addresses share one
    /32, so EnforceDistinctSubnets keeps any two of them off one circuit."""
    dual = {n.nickname for n in PLAN.nodes if n.ipv6_address}
    assert dual == {"auth1", "auth2", "auth3", "guard1", "guard2"}
    assert len(set(PLAN.ipv6_addresses)) == len(dual)
    nets = {ipaddress.ip_network(f"{a}/32", strict=False) for a in PLAN.ipv6_addresses}
    assert len(nets) == 1
    assert all(ipaddress.ip_address(a).is_private for a in PLAN.ipv6_addresses)
    assert PLAN.node("guard1").ipv6_orport == layout.OR_PORT
    assert PLAN.node("guard3").ipv6_orport is None
    v4 = PLAN.without_ipv6()
    assert not v4.ipv6_addresses and [n.address for n in v4.nodes] == [
        n.address for n in PLAN.nodes
    ]


def test_expected_flags() -> None:
    assert "Guard" in layout.expected_flags(PLAN.node("guard1"))
    assert "Exit" not in layout.expected_flags(PLAN.node("guard1"))
    assert {"Exit", "HSDir", "Stable"} <= layout.expected_flags(PLAN.node("exit2"))
    assert "Authority" in layout.expected_flags(PLAN.node("auth1"))
    assert "HSDir" not in layout.expected_flags(PLAN.node("auth1"))
