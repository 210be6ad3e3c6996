"""Relay message codecs (tor-spec §6, §5.1.2, §7.3.1).

Hex vectors marked "Arti" are from zydou/arti@cadcd0d (GitLab tpo/core/arti mirror),
crates/tor-cell/tests/testvec_relaymsg.rs: captured from C tor 0.4.5 in a chutney
network, except those Arti marks hand-generated.
"""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puretor.errors import RemoteProtocolError
from puretor.proto.relaymsg import (
    RELAY_BODY_LEN,
    RELAY_DATA_LEN,
    RELAY_HEADER_LEN,
    Connected,
    End,
    EndReason,
    LinkSpecifier,
    RelayCommand,
    ResolvedAnswer,
    decode_connected,
    decode_end,
    decode_extended2,
    decode_link_specifiers,
    decode_resolved,
    decode_sendme,
    decode_truncated,
    describe,
    encode_begin,
    encode_begin_dir,
    encode_end,
    encode_extend2,
    encode_link_specifiers,
    encode_resolve,
    encode_sendme_v1,
    ls_ed_id,
    ls_ipv4,
    ls_ipv6,
    ls_rsa_id,
)


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def test_constants_and_numbers() -> None:
    assert (RELAY_BODY_LEN, RELAY_HEADER_LEN, RELAY_DATA_LEN) == (509, 11, 498)
    assert RelayCommand.BEGIN_DIR == 13 and RelayCommand.EXTENDED2 == 15
    # [C-TOR] or.h: XOFF 43, XON 44 (the 2023 tor-spec.txt table swaps them).
    assert RelayCommand.INTRODUCE_ACK == 40 and RelayCommand.XOFF == 43
    assert [r.value for r in EndReason] == list(range(1, 15))


def test_end_reason_names() -> None:
    assert EndReason.describe(4) == "EXITPOLICY"
    assert describe(14) == "NOTDIRECTORY"
    assert describe(99) == "UNKNOWN(99)"


# --- BEGIN / BEGIN_DIR --------------------------------------------------------------


def test_begin_arti_vectors() -> None:
    assert encode_begin("127.0.0.1", 7003) == h("3132372E302E302E313A3730303300")
    assert encode_begin("www.xkcd.com", 443, 3) == h("7777772e786b63642e636f6d3a34343300 00000003")
    assert encode_begin("2001:db8::1", 22) == h("5b323030313a6462383a3a315d3a323200")


def test_begin_lowercases_and_brackets() -> None:
    assert encode_begin("WWW.Example.COM", 80) == b"www.example.com:80\0"
    assert encode_begin("[2001:DB8::1]", 22) == b"[2001:db8::1]:22\0"
    # Onion-service streams name only the port (rend-spec §4.2).
    assert encode_begin("", 80) == b":80\0"


@pytest.mark.parametrize(
    ("host", "port"),
    [("a.com", 0), ("a.com", 65536), ("torproject™.org", 443), ("a\0b", 1), ("x:y", 1)],
)
def test_begin_rejects_bad_targets(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        encode_begin(host, port)


def test_begin_dir_is_empty() -> None:
    assert encode_begin_dir() == b""


# --- CONNECTED ----------------------------------------------------------------------


def test_connected_arti_vectors() -> None:
    assert decode_connected(b"") == Connected(None, None)
    assert decode_connected(h("7F000001 00000E10")) == Connected("127.0.0.1", 0xE10)
    v6 = h("00000000 06 20010db8 00000000 00000000 00001122 00000E10")
    assert decode_connected(v6) == Connected("2001:db8::1122", 0xE10)


def test_connected_is_lenient() -> None:
    # Arti rejects a bogus address type; like C tor we just learn nothing.
    bogus = h("00000000 07 20010db8 00000000 00000000 00001122 00000E10")
    assert decode_connected(bogus) == Connected(None, None)
    assert decode_connected(bytes(8)) == Connected(None, None)  # BEGIN_DIR style zeros
    assert decode_connected(h("7F000001")) == Connected("127.0.0.1", None)
    assert decode_connected(h("7F")) == Connected(None, None)


# --- END ----------------------------------------------------------------------------


def test_end_arti_vectors() -> None:
    assert encode_end(EndReason.MISC) == h("01")
    assert decode_end(h("01")) == End(1, None, None)
    assert decode_end(h("06")) == End(EndReason.DONE, None, None)
    assert decode_end(h("04 7f000007 00000100")) == End(4, "127.0.0.7", 256)
    v6 = h("04 20010db8 00000000 00000000 0000f00b 00000200")
    assert decode_end(v6) == End(4, "2001:db8::f00b", 512)


def test_end_lenient_forms() -> None:
    assert decode_end(b"") == End(EndReason.MISC, None, None)  # tor-spec §6.3
    # Arti: no TTL reads as 0xffffffff.
    assert decode_end(h("04 7f000007")) == End(4, "127.0.0.7", 0xFFFFFFFF)
    assert decode_end(h("04 7f0000")) == End(4, None, None)  # bad length: ignore address
    assert decode_end(h("03 7f000007 00000100")) == End(3, None, None)  # only EXITPOLICY
    assert decode_end(h("c8")).reason == 200  # unknown reasons are accepted


# --- RESOLVE / RESOLVED -------------------------------------------------------------


def test_resolve_arti_vectors() -> None:
    assert encode_resolve("www.torproject.org") == b"www.torproject.org\0"
    assert encode_resolve("1.0.0.127.in-addr.arpa") == b"1.0.0.127.in-addr.arpa\0"
    with pytest.raises(ValueError):
        encode_resolve("")


def test_resolved_arti_vectors() -> None:
    assert decode_resolved(b"") == []
    assert decode_resolved(h("F0 00 00000E10")) == [ResolvedAnswer(0xF0, b"", 3600)]
    assert decode_resolved(h("F1 00 00000E10")) == [ResolvedAnswer(0xF1, b"", 3600)]
    assert decode_resolved(h("04 04 7f000001 00000E10 04 04 7f000002 00001c20")) == [
        ResolvedAnswer(4, "127.0.0.1", 3600),
        ResolvedAnswer(4, "127.0.0.2", 7200),
    ]
    assert decode_resolved(h("06 10 12340000000000000000000000005678 00000080")) == [
        ResolvedAnswer(6, "1234::5678", 128)
    ]
    host = "7777772e746f7270726f6a6563742e6f7267"
    assert decode_resolved(h(f"00 12 {host} 00000258")) == [
        ResolvedAnswer(0, "www.torproject.org", 600)
    ]
    assert decode_resolved(h(f"63 12 {host} 00000258")) == [
        ResolvedAnswer(0x63, b"www.torproject.org", 600)
    ]


@pytest.mark.parametrize(
    "body", ["04 03 010203 00000001", "04", "04 04 7f000001 0000", "00 05 6162"]
)
def test_resolved_malformed(body: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_resolved(h(body))


# --- link specifiers, EXTEND2, EXTENDED2 ----------------------------------------------


def test_extend2_arti_vector() -> None:
    rsa = h("03479E93EBF3FF2C58C1C9DBF2DE9DE9C2801B3E")
    hs = h(
        "03479E93EBF3FF2C58C1C9DBF2DE9DE9C2801B3E36A3E0BDB1F1A10579820243DD2E228B902940EB49EF842646E3926768C28410074BEE50A535116D657C6BFB7E5114119DC69F05DF907EF62002EA782B0A357F"
    )
    body = h("02 00 06 7F0000011388 02 14 03479E93EBF3FF2C58C1C9DBF2DE9DE9C2801B3E 0002 0054") + hs
    assert encode_extend2([ls_ipv4("127.0.0.1", 5000), ls_rsa_id(rsa)], 2, hs) == body
    specs, used = decode_link_specifiers(body)
    assert specs == [LinkSpecifier(0, h("7F0000011388")), LinkSpecifier(2, rsa)]
    assert body[used : used + 4] == h("0002 0054")


def test_link_specifier_helpers() -> None:
    assert ls_ipv6("2001:db8::1", 443) == LinkSpecifier(
        1, h("20010db8000000000000000000000001 01bb")
    )
    assert ls_ed_id(b"\x07" * 32) == LinkSpecifier(3, b"\x07" * 32)
    with pytest.raises(ValueError):
        ls_rsa_id(bytes(19))
    with pytest.raises(ValueError):
        ls_ed_id(bytes(31))


def test_extend2_too_long() -> None:
    with pytest.raises(ValueError):
        encode_extend2([ls_rsa_id(bytes(20))], 2, bytes(RELAY_DATA_LEN))


def test_extended2_arti_vector() -> None:
    hs = "0026619058EB2661834D54C2624828728F28915587CDAD1AD3373B85F33A480EEA9D3B2CEF8D39C1DBD2FA519E75296B96960690C79A28D6A0D9454F8E9634BD"
    assert decode_extended2(h("0040" + hs)) == h(hs)
    with pytest.raises(RemoteProtocolError):
        decode_extended2(h("0041" + hs))


@pytest.mark.parametrize("body", ["", "01", "01 00", "01 00 02 aa", "02 00 00 02 01"])
def test_link_specifiers_truncated(body: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_link_specifiers(h(body))


# --- SENDME, TRUNCATED -----------------------------------------------------------------


def test_sendme_arti_vectors() -> None:
    tag = h("F01234989823478bcdefabcdef01234567890123")
    assert encode_sendme_v1(tag) == h("01 0014") + tag
    assert decode_sendme(h("01 0014") + tag) == (1, tag)
    assert decode_sendme(b"") == (0, None)


def test_sendme_versions() -> None:
    assert decode_sendme(h("00 0000")) == (0, None)
    assert decode_sendme(h("02 0002 abcd ffff")) == (2, h("abcd"))  # caller must reject
    with pytest.raises(RemoteProtocolError):
        decode_sendme(h("01 0013") + bytes(19))  # v1 digest too short
    with pytest.raises(RemoteProtocolError):
        decode_sendme(h("01 0014") + bytes(19))  # truncated
    with pytest.raises(RemoteProtocolError):
        decode_sendme(h("01 00"))
    with pytest.raises(ValueError):
        encode_sendme_v1(bytes(32))


def test_truncated_arti_vector() -> None:
    assert decode_truncated(h("08")) == 8
    assert decode_truncated(b"") == 0


# --- properties ---------------------------------------------------------------------

link_specs = st.builds(LinkSpecifier, st.integers(0, 255), st.binary(max_size=40))


@given(st.lists(link_specs, max_size=8), st.binary(max_size=20))
def test_link_specifiers_roundtrip(specs: list[LinkSpecifier], tail: bytes) -> None:
    buf = encode_link_specifiers(specs)
    assert decode_link_specifiers(buf + tail) == (specs, len(buf))


@given(st.lists(link_specs, max_size=4), st.integers(0, 0xFFFF), st.binary(max_size=200))
def test_extend2_roundtrip(specs: list[LinkSpecifier], htype: int, hdata: bytes) -> None:
    body = encode_extend2(specs, htype, hdata)
    got, used = decode_link_specifiers(body)
    assert got == specs
    assert int.from_bytes(body[used : used + 2], "big") == htype
    assert decode_extended2(body[used + 2 :]) == hdata


@given(st.binary(min_size=20, max_size=20))
def test_sendme_roundtrip(digest: bytes) -> None:
    assert decode_sendme(encode_sendme_v1(digest)) == (1, digest)


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,60}[a-z0-9])?", fullmatch=True)


@given(st.one_of(hostnames, st.ip_addresses().map(str)), st.integers(1, 65535), st.integers(0, 7))
def test_begin_shape(host: str, port: int, flags: int) -> None:
    body = encode_begin(host, port, flags)
    addrport, _, rest = body.partition(b"\0")
    assert addrport.rsplit(b":", 1) == [
        (f"[{host}]" if ":" in host else host).encode(),
        str(port).encode(),
    ]
    assert rest == (flags.to_bytes(4, "big") if flags else b"")


@given(st.ip_addresses(), st.integers(0, 2**32 - 1))
def test_connected_roundtrip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, ttl: int) -> None:
    if ip.version == 4:
        body = ip.packed + ttl.to_bytes(4, "big")
    else:
        body = bytes(4) + b"\x06" + ip.packed + ttl.to_bytes(4, "big")
    expect = Connected(None, None) if str(ip) == "0.0.0.0" else Connected(str(ip), ttl)
    assert decode_connected(body) == expect


@given(st.lists(st.one_of(st.ip_addresses(), hostnames), max_size=5), st.integers(0, 2**32 - 1))
def test_resolved_roundtrip(values: list[object], ttl: int) -> None:
    body = b""
    expect = []
    for v in values:
        if isinstance(v, str):
            raw, t, value = v.encode(), 0, v
        else:
            assert isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address)
            raw, t, value = v.packed, v.version, str(v)  # type 4 or 6
        body += bytes((t, len(raw))) + raw + ttl.to_bytes(4, "big")
        expect.append(ResolvedAnswer(t, value, ttl))
    assert decode_resolved(body) == expect


@given(st.binary(max_size=600))
def test_decoders_only_raise_remote_protocol_error(data: bytes) -> None:
    for decode in (
        decode_connected,
        decode_end,
        decode_resolved,
        decode_link_specifiers,
        decode_extended2,
        decode_sendme,
        decode_truncated,
    ):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)
