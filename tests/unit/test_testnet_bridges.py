"""The private network's bridges and censor: torrcs, bridge lines and firewall rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from puretor.testnet import censor, layout, torrc
from puretor.testnet.describe import pt_args_from_bridgeline
from puretor.testnet.layout import NetworkPlan

PLAN = NetworkPlan()


def test_bridges_are_unlisted_relays() -> None:
    bridges = PLAN.by_role("bridge")
    assert [b.transport for b in bridges] == [None, "obfs4"]
    assert all(b.is_relay and b.is_bridge and not b.is_listed for b in bridges)
    assert not any(b.hsdir for b in bridges)
    blocked = PLAN.listed_addresses
    assert not {b.address for b in bridges} & set(blocked)
    for n in PLAN.by_role("authority", "guard", "middle", "exit"):
        assert n.address in blocked
        assert n.ipv6_address is None or n.ipv6_address in blocked


def test_bridge_torrc() -> None:
    plain, obfs4 = PLAN.by_role("bridge")
    text = torrc.bridge_torrc(plain, Path("/d"), [], obfs4proxy="/usr/bin/obfs4proxy")
    lines = text.splitlines()
    assert "BridgeRelay 1" in lines and "PublishServerDescriptor 0" in lines
    assert f"ORPort {plain.address}:{layout.OR_PORT}" in lines
    assert not any(line.startswith("ServerTransport") for line in lines)
    lines = torrc.bridge_torrc(obfs4, Path("/d"), [], obfs4proxy="/x/obfs4proxy").splitlines()
    assert "ServerTransportPlugin obfs4 exec /x/obfs4proxy" in lines
    assert f"ServerTransportListenAddr obfs4 {obfs4.address}:{layout.OBFS4_PORT}" in lines
    assert "ExtORPort auto" in lines


def test_bridge_line_file() -> None:
    text = (
        "# obfs4 torrc client bridge line\n#\n# This file is an automatically generated "
        "bridge line based on\n#\n"
        "Bridge obfs4 <IP ADDRESS>:<PORT> <FINGERPRINT> cert=AbC+/d iat-mode=0\n"
    )
    assert pt_args_from_bridgeline(text, "obfs4") == {"cert": "AbC+/d", "iat-mode": "0"}
    with pytest.raises(ValueError):
        pt_args_from_bridgeline("# nothing\n", "obfs4")


def test_censor_ruleset() -> None:
    script = censor.ruleset(["127.1.0.1", "127.2.0.1", "fd00:0:0:1::1"], 4242)
    assert "meta skgid 4242 ip daddr { 127.1.0.1, 127.2.0.1 } counter drop" in script
    assert "meta skgid 4242 ip6 daddr { fd00:0:0:1::1 } counter drop" in script
    assert script.startswith(f"add table inet {censor.TABLE}\ndelete table inet {censor.TABLE}\n")


def test_censor_counters() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": censor.TABLE}},
            {"rule": {"expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}]}},
            {"rule": {"expr": [{"counter": {"packets": 2, "bytes": 120}}, {"drop": None}]}},
        ]
    }
    assert censor.counted_packets(listing) == 5
    assert censor.counted_packets({"nftables": []}) == 0
