"""Reading the authorities' cached consensus to decide readiness."""

from __future__ import annotations

import base64

from puretor.testnet import consensus

FP1, FP2 = "AA" * 20, "BB" * 20


def _id(fp: str) -> str:
    return base64.b64encode(bytes.fromhex(fp)).decode().rstrip("=")


MD_CONSENSUS = f"""network-status-version 3 microdesc
vote-status consensus
valid-after 2026-01-01 00:00:20
fresh-until 2026-01-01 00:00:40
valid-until 2026-01-01 00:01:20
params cc_alg=2 sendme_accept_min_version=1
r guard1 {_id(FP1)} 2038-01-01 00:00:00 127.4.0.1 9001 0
a [fd00:0:0:4::1]:9001
m sha256digest
s Fast Guard HSDir Running Stable V2Dir Valid
v Tor 0.4.9.11
w Bandwidth=12000
r exit1 {_id(FP2)} 2038-01-01 00:00:00 127.8.0.1 9001 0
s Exit Fast Running Valid
directory-footer
bandwidth-weights Wbd=0 Wgg=5895 Wmm=10000
directory-signature sha256 X Y
-----BEGIN SIGNATURE-----
-----END SIGNATURE-----
"""


def test_parse_microdesc_flavour() -> None:
    c = consensus.parse(MD_CONSENSUS)
    assert c.valid_after == "2026-01-01 00:00:20"
    assert c.valid_until == "2026-01-01 00:01:20"
    assert c.params == {"cc_alg": 2, "sendme_accept_min_version": 1}
    assert c.bandwidth_weights["Wgg"] == 5895
    assert c.signatures == 1
    g = c.routers[FP1]
    assert (g.nickname, g.address, g.orport) == ("guard1", "127.4.0.1", 9001)
    assert "Guard" in g.flags
    assert g.ipv6 == "[fd00:0:0:4::1]:9001" and c.routers[FP2].ipv6 is None
    assert c.routers[FP2].flags == frozenset({"Exit", "Fast", "Running", "Valid"})


def test_parse_ns_flavour_address() -> None:
    # The ns flavour has a descriptor digest between identity and date.
    text = f"r exit1 {_id(FP2)} DIGESTdigest 2026-01-01 00:00:00 127.8.0.1 9001 0\ns Exit\n"
    entry = consensus.parse(text).routers[FP2]
    assert (entry.address, entry.orport, entry.flags) == ("127.8.0.1", 9001, frozenset({"Exit"}))


def test_missing_flags() -> None:
    c = consensus.parse(MD_CONSENSUS)
    ok = {FP1: ("guard1", frozenset({"Guard", "Stable"}))}
    assert consensus.missing_flags(c, ok) == []
    bad = {
        FP2: ("exit1", frozenset({"Exit", "Stable"})),
        "CC" * 20: ("middle1", frozenset({"Running"})),
    }
    assert consensus.missing_flags(c, bad) == ["exit1 lacks Stable", "middle1 not listed"]
    no_weights = consensus.parse(MD_CONSENSUS.replace("bandwidth-weights", "x"))
    assert consensus.missing_flags(no_weights, ok) == ["no bandwidth-weights line"]


def test_missing_ipv6_orport() -> None:
    c = consensus.parse(MD_CONSENSUS)
    flags = {FP1: ("guard1", frozenset({"Guard"})), FP2: ("exit1", frozenset({"Exit"}))}
    assert consensus.missing_flags(c, flags, {FP1: "[fd00:0:0:4::1]:9001"}) == []
    assert consensus.missing_flags(c, flags, {FP2: "[fd00:0:0:8::1]:9001"}) == [
        "exit1 has no `a` line for [fd00:0:0:8::1]:9001"
    ]
