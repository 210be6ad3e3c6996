"""Cell framing and channel-message codecs (tor-spec §3, §4, §5.1, §5.4).

Hex vectors marked "Arti" are from zydou/arti@cadcd0d (GitLab tpo/core/arti mirror),
crates/tor-cell/tests/testvec_chanmsg.rs — captured from C tor 0.4.5 in a chutney
network unless Arti marks them hand-made — and crates/tor-proto/src/channel/handshake.rs.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puretor.errors import RemoteProtocolError
from puretor.proto.cells import (
    CELL_LEN,
    PAYLOAD_LEN,
    CellCommand,
    DestroyReason,
    Netinfo,
    decode_auth_challenge,
    decode_certs,
    decode_created2,
    decode_created_fast,
    decode_destroy,
    decode_netinfo,
    decode_versions,
    describe,
    encode_cell,
    encode_create2,
    encode_create_fast,
    encode_destroy,
    encode_netinfo,
    encode_padding_negotiate,
    encode_versions_cell,
    is_var_cell,
)


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def padded(s: str) -> bytes:
    b = h(s)
    return b + bytes(PAYLOAD_LEN - len(b))


# --- commands and framing -------------------------------------------------------------


def test_command_numbers() -> None:
    assert CellCommand.RELAY_EARLY == 9
    assert CellCommand.PADDING_NEGOTIATE == 12
    assert CellCommand.AUTHORIZE == 132
    assert [c for c in range(256) if is_var_cell(c)] == [7, *range(128, 256)]


def test_versions_cell_arti_vector() -> None:
    # Arti handshake.rs VERSIONS: a whole cell with a 2-byte CircID.
    assert encode_versions_cell([3, 4, 5]) == h("0000 07 0006 0003 0004 0005")
    assert decode_versions(h("000300040005")) == [3, 4, 5]


def test_versions_odd_trailing_byte_is_ignored() -> None:
    assert decode_versions(h("0004 0005 ff")) == [4, 5]
    assert decode_versions(b"") == []


def test_encode_fixed_cell_pads_to_514() -> None:
    cell = encode_cell(0x80000001, CellCommand.CREATE_FAST, b"\x01" * 20)
    assert len(cell) == CELL_LEN
    assert cell[:5] == h("80000001 05")
    assert cell[5:25] == b"\x01" * 20 and cell[25:] == bytes(489)


def test_encode_var_cell_is_length_prefixed() -> None:
    # Arti handshake.rs VPADDING cell.
    assert encode_cell(0, CellCommand.VPADDING, b"\xff\xff\xff") == h("00000000 80 0003 FFFFFF")


def test_encode_fixed_cell_too_long() -> None:
    encode_cell(1, CellCommand.RELAY, bytes(PAYLOAD_LEN))
    with pytest.raises(ValueError):
        encode_cell(1, CellCommand.RELAY, bytes(PAYLOAD_LEN + 1))


# --- NETINFO --------------------------------------------------------------------------


def test_netinfo_client_arti_vector() -> None:
    assert encode_netinfo("127.0.0.1") == h("00000000 04 04 7F000001 00")
    assert decode_netinfo(padded("00000000 04 04 7F000001 00")) == Netinfo(0, "127.0.0.1", ())


def test_netinfo_relay_arti_vectors() -> None:
    body = "5F6F80E1 04 04 7F000001 01 04 04 7F000001"
    assert decode_netinfo(padded(body)) == Netinfo(0x5F6F80E1, "127.0.0.1", ("127.0.0.1",))
    assert encode_netinfo("127.0.0.1", ["127.0.0.1"], 0x5F6F80E1) == h(body)
    v6 = "00000000000000000000000000000001"
    body6 = f"5F6F859C 06 10 {v6} 02 04 04 7F000001 06 10 {v6}"
    expect = Netinfo(0x5F6F859C, "::1", ("127.0.0.1", "::1"))
    assert decode_netinfo(padded(body6)) == expect
    assert encode_netinfo("::1", ["127.0.0.1", "::1"], 0x5F6F859C) == h(body6)


def test_netinfo_bogus_addresses_are_ignored() -> None:
    # Arti (hand-made): wrong ALENs and an unknown ATYPE are skipped (tor-spec §4.5).
    body = (
        "5F6F859C 06 09 000000000000000000 03 04 06 7F0000010000 BB 02 FFFF 06 10 "
        + "00" * 15
        + "01"
    )
    assert decode_netinfo(h(body)) == Netinfo(0x5F6F859C, None, ("::1",))


def test_netinfo_zero_other_address_is_none() -> None:
    assert decode_netinfo(padded("00000000 04 04 00000000 00")).other_address is None


def test_netinfo_arti_handshake_prefix() -> None:
    n = decode_netinfo(padded("48949290 04 04 7f000002 01 04 04 7f000003"))
    assert n == Netinfo(0x48949290, "127.0.0.2", ("127.0.0.3",))


@pytest.mark.parametrize(
    "body",
    [
        "",
        "000000",
        "00000000",
        "00000000 04",
        "00000000 04 04 7f",
        "00000000 04 04 7f000001",
        "00000000 04 04 7f000001 01 04",
    ],
)
def test_netinfo_truncated(body: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_netinfo(h(body))


# --- CERTS and AUTH_CHALLENGE ----------------------------------------------------------


def test_certs_arti_vector() -> None:
    # Arti testvec_chanmsg.rs test_certs (5 certs from a chutney relay); the bodies
    # are checked in test_certs.py, here only the framing.
    t4 = "01040006CC2A01F82294B866A31F01FC5D0DA8572850A9B929545C3266558D7D2316E3B74172B00100200400DCB604DB2034B00FD16986D4ADB9D16B21CB4E4457A33DEC0F538903683E96E9FF1A5203FA27F86EF7528D89A0845D2520166E340754FFEA2AAE0F612B7CE5DA094A0236CDAC45034B0B6842C18E7F6B51B93A3CF7E60663B8AD061C30A62602"
    t5 = "01050006C98A03B4FD606B64E4CBD466B8D76CB131069BAE6F3AA1878857C9F624E31D77A799B8007173E5F8068431D0D3F5EE16B4C9FFD59DF373E152A87281BAE744AA5FCF72171BF4B27C4E8FC1C6A9FC5CA11058BC49647063D7903CFD9F512F89099B27BC0C"
    payload = h(f"02 04 008C {t4} 05 0068 {t5} ffff")  # trailing bytes are ignored
    assert decode_certs(payload) == [(4, h(t4)), (5, h(t5))]


@pytest.mark.parametrize("body", ["", "01", "01 04 00", "01 04 0002 00", "02 04 0001 00"])
def test_certs_truncated(body: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_certs(h(body))


def test_certs_empty_list() -> None:
    # Arti handshake.rs NOCERTS.
    assert decode_certs(h("00")) == []


def test_auth_challenge_arti_vector() -> None:
    challenge = h("00DA5C085DEE4F3656710DA3B73652E48ACD5BAE608335FCA3FB6C4DEE104A51")
    assert decode_auth_challenge(challenge + h("0002 0001 0003")) == (challenge, [1, 3])
    # Arti handshake.rs AUTHCHALLENGE, with a trailing byte.
    assert decode_auth_challenge(b"\xff" * 32 + h("0002 0003 00ff 00")) == (b"\xff" * 32, [3, 255])


@pytest.mark.parametrize("n", [0, 31, 33, 35])
def test_auth_challenge_truncated(n: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_auth_challenge((bytes(32) + h("0001 0003"))[:n])


# --- CREATE2 / CREATED2 / CREATE_FAST / DESTROY ------------------------------------------


def test_create2_arti_vector() -> None:
    hs = "09164430E84D3BC56EC7E1D22734742345E2DECE0DE535B66B8E8A0EBBDAE3263C53E02EC2215685CD3A977DC7946FF47F84CD7025F75D252D1B35DEA28F32FA912513889A207E5049992DBC9BC541194C13624A"
    assert encode_create2(2, h(hs)) == h("0002 0054" + hs)


def test_created2_arti_vector() -> None:
    hs = "0108907A701030ADB6CA9C6AF097DC4855614655659B6A7BF21C1097DCE7C66EE0E4EF287DE7CED40BEECA8B90140C05DB6138AEB551CE0C037068C315E307A0"
    assert decode_created2(padded("0040" + hs)) == h(hs)


@pytest.mark.parametrize("body", ["", "00", "0040" + "00" * 63])
def test_created2_truncated(body: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_created2(h(body))


def test_create2_too_long() -> None:
    with pytest.raises(ValueError):
        encode_create2(3, bytes(PAYLOAD_LEN - 3))


def test_create_fast_arti_vectors() -> None:
    x = h("0DC2A5EB921EF4B71F41184A99F4FAD99620A648")
    assert encode_create_fast(x) == x
    with pytest.raises(ValueError):
        encode_create_fast(x[:19])
    body = h("03B74250B01D09FDA72B70D63AE7994926F13055BED23485F6B3C8C3CEAFE1DF48A9FF8BAC4993FC")
    assert decode_created_fast(body + bytes(469)) == (body[:20], body[20:])
    with pytest.raises(RemoteProtocolError):
        decode_created_fast(body[:39])


def test_destroy() -> None:
    # Arti: "04" and "0000".
    assert encode_destroy(4) == h("04")
    assert decode_destroy(padded("04")) == DestroyReason.HIBERNATING
    assert decode_destroy(padded("0000")) == DestroyReason.NONE
    assert decode_destroy(b"") == 0


def test_destroy_reason_names() -> None:
    assert [r.value for r in DestroyReason] == list(range(13))
    assert DestroyReason.describe(7) == "OR_IDENTITY"
    assert DestroyReason.describe(200) == "UNKNOWN(200)"
    assert describe(12) == "NOSUCHSERVICE"


def test_padding_negotiate_arti_vectors() -> None:
    assert encode_padding_negotiate(2, 256, 512) == h("00 02 0100 0200")
    assert encode_padding_negotiate(1) == h("00 01 0000 0000")


# --- properties ---------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addrs = st.one_of(ipv4, ipv6)


@given(st.lists(st.integers(0, 0xFFFF), max_size=100))
def test_versions_roundtrip(versions: list[int]) -> None:
    cell = encode_versions_cell(versions)
    assert int.from_bytes(cell[3:5], "big") == len(cell) - 5
    assert decode_versions(cell[5:]) == versions


@given(
    addrs.filter(lambda a: a not in ("0.0.0.0", "::")),
    st.lists(addrs, max_size=10),
    st.integers(0, 2**32 - 1),
)
def test_netinfo_roundtrip(other: str, mine: list[str], ts: int) -> None:
    payload = encode_netinfo(other, mine, ts)
    cell = encode_cell(0, CellCommand.NETINFO, payload)
    assert decode_netinfo(cell[5:]) == Netinfo(ts, other, tuple(mine))


@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=8))
def test_certs_roundtrip(certs: list[tuple[int, bytes]]) -> None:
    payload = bytes((len(certs),)) + b"".join(
        bytes((t,)) + len(b).to_bytes(2, "big") + b for t, b in certs
    )
    assert decode_certs(payload) == certs


@given(st.integers(0, 0xFFFF), st.binary(max_size=PAYLOAD_LEN - 4))
def test_create2_roundtrip(htype: int, hdata: bytes) -> None:
    payload = encode_create2(htype, hdata)
    assert int.from_bytes(payload[:2], "big") == htype
    # CREATED2 is CREATE2 without HTYPE.
    assert decode_created2(encode_cell(1, 11, payload[2:])[5:]) == hdata


@given(st.binary(max_size=600))
def test_decoders_only_raise_remote_protocol_error(data: bytes) -> None:
    for decode in (
        decode_versions,
        decode_netinfo,
        decode_certs,
        decode_auth_challenge,
        decode_created2,
        decode_created_fast,
        decode_destroy,
    ):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)
