"""DirAuthority / FallbackDir syntax and the built-in lists."""

from __future__ import annotations

import pytest
from dir_testlib import data

from puretor.dir.authorities import (
    DEFAULT_AUTHORITIES,
    default_fallbacks,
    parse_dir_authority_line,
    parse_fallback_dir_line,
    v3_idents,
)
from puretor.dir.consensus import parse_consensus
from puretor.errors import ConfigError


def test_c_tor_line_with_spaced_fingerprint_and_ipv6() -> None:
    a = parse_dir_authority_line(
        "tor26 orport=443 v3ident=2F3DF9CA0E5D36F2685A2DA67184EB8DCB8CBA8C "
        "ipv6=[2a02:16a8:662:2203::1]:443 "
        "217.196.147.77:80 FAA4 BCA4 A6AC 0FB4 CA2F 8AD5 A11D 9E12 2BA8 94F6"
    )
    assert (a.nickname, a.address, a.or_port, a.dir_port) == ("tor26", "217.196.147.77", 443, 80)
    assert a.v3ident == bytes.fromhex("2F3DF9CA0E5D36F2685A2DA67184EB8DCB8CBA8C")
    assert a.fingerprint == "FAA4BCA4A6AC0FB4CA2F8AD5A11D9E122BA894F6"
    assert a.ipv6 == ("2a02:16a8:662:2203::1", 443)
    assert not a.bridge


def test_chutney_style_line() -> None:
    # What a private test network's torrc contains (spec-map §5.7).
    a = parse_dir_authority_line(
        "test000a orport=5000 no-v2 v3ident=D190BF3B00E311A9AEB6D62B51980E9B2109BAD1 "
        "127.0.0.1:7000 4B6EE2DF6E7C30C1A2F2CC0B0D3E2B6E0E6C6A1B"
    )
    assert a.nickname == "test000a" and a.or_port == 5000 and a.dir_port == 7000


def test_optional_nickname_and_bridge() -> None:
    a = parse_dir_authority_line("orport=9001 bridge 66.111.2.131:9030 " + "BA44" * 10)
    assert a.nickname == "" and a.bridge and a.v3ident is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "empty"),
        ("x orport=1 v3ident=ABC 1.2.3.4:80 " + "A" * 40, "v3ident must be 40 hex"),
        ("x orport=0 1.2.3.4:80 " + "A" * 40, "out of range"),
        ("x orport=99999 1.2.3.4:80 " + "A" * 40, "orport 99999 out of range"),
        ("x orport=x1 1.2.3.4:80 " + "A" * 40, "bad orport"),
        ("x 1.2.3.4:80 " + "A" * 40, "no orport"),
        ("x orport=1 1.2.3.4 " + "A" * 40, "missing dirport"),
        ("x orport=1 1.2.3.400:80 " + "A" * 40, "bad IPv4"),
        ("x orport=1 1.2.3.4:80 " + "A" * 39, "fingerprint must be 40 hex"),
        ("x orport=1 1.2.3.4:80", "needs 'address:dirport fingerprint'"),
        ("x orport=1 frobnicate 1.2.3.4:80 " + "A" * 40, "unrecognised flag 'frobnicate'"),
        ("x orport=1 ipv6=1.2.3.4:5 1.2.3.4:80 " + "A" * 40, "bad ipv6"),
        ("x orport=1 ipv6=[1.2.3.4]:5 1.2.3.4:80 " + "A" * 40, "bad IPv6"),
    ],
)
def test_dir_authority_errors(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_dir_authority_line(line)


def test_fallback_lines() -> None:
    f = parse_fallback_dir_line(
        "185.235.146.29 orport=443 id=5A6976353F19DAB6EB63A2CB95C00039B7D4064A "
        "ipv6=[2a10:8a40:f313::29]:443"
    )
    assert f.address == "185.235.146.29" and f.or_port == 443 and f.ed_id is None
    assert f.ipv6 == ("2a10:8a40:f313::29", 443)
    g = parse_fallback_dir_line("1.2.3.4:80 orport=9001 id=" + "a" * 40 + " weight=10")
    assert g.rsa_id == bytes.fromhex("a" * 40)
    for bad, message in [
        ("1.2.3.4 id=" + "A" * 40, "no orport"),
        ("1.2.3.4 orport=1", "no id"),
        ("orport=1 id=" + "A" * 40, "exactly one address"),
        ("1.2.3.4 5.6.7.8 orport=1 id=" + "A" * 40, "exactly one address"),
        ("1.2.3.4 orport=1 id=" + "A" * 40 + " foo=1", "unrecognised option"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_fallback_dir_line(bad)


def test_builtin_lists_match_the_live_network() -> None:
    assert len(DEFAULT_AUTHORITIES) == 10
    names = [a.nickname for a in DEFAULT_AUTHORITIES]
    assert "faravahar" in names and "Serge" in names
    assert [a for a in DEFAULT_AUTHORITIES if a.v3ident is None] == [
        a for a in DEFAULT_AUTHORITIES if a.bridge
    ]
    # The nine v3 identities are exactly the dir-sources of a 2026 live consensus.
    live = parse_consensus(data("arti-live-consensus-microdesc"))
    assert v3_idents(DEFAULT_AUTHORITIES) == {s.identity for s in live.dir_sources}
    fallbacks = default_fallbacks()
    assert len(fallbacks) == 200
    assert len({f.rsa_id for f in fallbacks}) == 200
    assert sum(f.ipv6 is not None for f in fallbacks) > 50
