"""hs-ntor client side (rend-spec-v3 §3.2, §3.3.2, §4.2)."""

from __future__ import annotations

import hashlib
import os

import pytest
from hs_testlib import service_handle_introduce2, xpub

from puretor.errors import OnionError, RemoteProtocolError
from puretor.hs.ntor import (
    EXT_CC_REQUEST,
    M_HSEXPAND,
    IntroduceAckStatus,
    build_introduce1,
    complete_rendezvous,
    expand_keys,
    hs_mac,
    parse_introduce_ack,
    pow_extension,
)
from puretor.proto.relaymsg import LinkSpecifier


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# rend-spec-v3 Appendix G.1 "Test vectors for hs-ntor / NTOR-WITH-EXTRA-DATA"
# (torspec 8961bb4d rend-spec-v3.txt; also Arti tor-proto hs_ntor.rs `testvec`).
G_AUTH_KEY = h("34E171E4358E501BFF21ED907E96AC6B FEF697C779D040BBAF49ACC30FC5D21F")
G_B = h("8E5127A40E83AABF6493E41F142B6EE3 604B85A3961CD7E38D247239AFF71979")
G_b = h("A0ED5DBF94EEB2EDB3B514E4CF6ABFF6 022051CC5F103391F1970A3FCD15296A")
G_SUBCRED = h("0085D26A9DEBA252263BF0231AEAC59B 17CA11BAD8A218238AD6487CBAD68B57")
G_H = h("""000000000000000000000000000000000000000002002034E171E4358E501BFF
           21ED907E96AC6BFEF697C779D040BBAF49ACC30FC5D21F00""")
G_P = h("""6BD364C12638DD5C3BE23D76ACA05B04E6CE932C0101000100200DE6130E4FCA
           C4EDDA24E21220CC3EADAE403EF6B7D11C8273AC71908DE565450300067F0000
           0113890214F823C4F8CC085C792E0AEE0283FE00AD7520B37D0320728D5DF39B
           7B7077A0118A900FF4456C382F0041300ACF9C58E51C392795EF870000000000
           0000000000000000000000000000000000000000000000000000000000000000
           000000000000000000000000000000000000000000000000000000000000""")
G_x = h("60B4D6BF5234DCF87A4E9D7487BDF3F4 A69B6729835E825CA29089CFDDA1E341")
G_X = h("BF04348B46D09AED726F1D66C618FDEA 1DE58E8CB8B89738D7356A0C59111D5D")
G_INTRODUCE1 = h("""
    000000000000000000000000000000000000000002002034E171E4358E501BFF
    21ED907E96AC6BFEF697C779D040BBAF49ACC30FC5D21F00BF04348B46D09AED
    726F1D66C618FDEA1DE58E8CB8B89738D7356A0C59111D5DADBECCCB38E37830
    4DCC179D3D9E437B452AF5702CED2CCFEC085BC02C4C175FA446525C1B9D5530
    563C362FDFFB802DAB8CD9EBC7A5EE17DA62E37DEEB0EB187FBB48C63298B0E8
    3F391B7566F42ADC97C46BA7588278273A44CE96BC68FFDAE31EF5F0913B9A9C
    7E0F173DBC0BDDCD4ACB4C4600980A7DDD9EAEC6E7F3FA3FC37CD95E5B8BFB3E
    35717012B78B4930569F895CB349A07538E42309C993223AEA77EF8AEA64F25D
    DEE97DA623F1AEC0A47F150002150455845C385E5606E41A9A199E7111D54EF2
    D1A51B7554D8B3692D85AC587FB9E69DF990EFB776D8""")
G_y = h("68CB5188CA0CD7924250404FAB54EE13 92D3D2B9C049A2E446513875952F8F55")
G_Y = h("8FBE0DB4D4A9C7FF46701E3E0EE7FD05 CD28BE4F302460ADDEEC9E93354EE700")
G_AUTH = h("4A92E8437B8424D5E5EC279245D5C72B 25A0327ACF6DAF902079FCB643D8B208")
G_SEED = h("4D0C72FE8AFF35559D95ECC18EB5A368 83402B28CDFD48C8A530A5A3D7D578DB")

# The pieces of P: cookie, one CC-request extension, RP ntor key, 3 link specifiers.
G_COOKIE = G_P[:20]
G_RP_KEY = G_P[26:58]
G_RP_SPECS = [
    LinkSpecifier(0, h("7F0000011389")),  # 127.0.0.1:5001
    LinkSpecifier(2, h("F823C4F8CC085C792E0AEE0283FE00AD7520B37D")),
    LinkSpecifier(3, h("728D5DF39B7B7077A0118A900FF4456C382F0041300ACF9C58E51C392795EF87")),
]


def build_g() -> tuple[object, bytes]:
    return build_introduce1(
        G_AUTH_KEY,
        G_B,
        G_SUBCRED,
        G_COOKIE,
        G_RP_KEY,
        G_RP_SPECS,
        client_private=G_x,
        extensions=[(EXT_CC_REQUEST, b"")],
    )


def test_appendix_g_introduce1_bytes() -> None:
    assert xpub(G_x) == G_X and xpub(G_y) == G_Y and xpub(G_b) == G_B
    state, body = build_g()
    assert body[: len(G_H)] == G_H
    assert body[len(G_H) : len(G_H) + 32] == G_X
    assert len(G_H) + len(G_P) == 246  # HS_CELL_INTRODUCE1_MIN_SIZE padding
    assert body == G_INTRODUCE1


def test_appendix_g_service_view_and_rendezvous() -> None:
    state, body = build_g()
    plain, reply, seed = service_handle_introduce2(body, G_b, G_SUBCRED, G_y)
    assert plain == G_P
    assert reply == G_Y + G_AUTH
    assert seed == G_SEED
    keys = complete_rendezvous(state, G_Y + G_AUTH + b"extra bytes are ignored")  # type: ignore[arg-type]
    k = hashlib.shake_256(G_SEED + M_HSEXPAND).digest(128)
    assert (keys.df, keys.db, keys.kf, keys.kb) == (k[:32], k[32:64], k[64:96], k[96:])
    assert keys == expand_keys(G_SEED)


def test_rendezvous_rejects_bad_auth() -> None:
    state, _ = build_g()
    with pytest.raises(OnionError) as exc:
        complete_rendezvous(state, G_Y + bytes(32))  # type: ignore[arg-type]
    assert exc.value.socks_code == 0xF3
    with pytest.raises(OnionError):
        complete_rendezvous(state, G_Y)  # type: ignore[arg-type]
    with pytest.raises(OnionError):  # small-order Y
        complete_rendezvous(state, bytes(32) + G_AUTH)  # type: ignore[arg-type]


def test_arti_ntor_mac_vectors() -> None:
    # Arti tor-proto hs_ntor.rs `ntor_mac` ("generated with hs_ntor_ref.py").
    assert hs_mac(b"who", b"knows?").hex() == (
        "5e7da329630fdaa3eab7498bb1dc625bbb9ca968f10392b6af92d51d5db17473"
    )
    assert hs_mac(b"gone", b"by").hex() == (
        "90071aabb06d3f7c777db41542f4790c7dd9e2e7b2b842f54c9c42bbdb37e9a0"
    )


@pytest.mark.parametrize("n_specs", [3, 4])
def test_random_roundtrip(n_specs: int) -> None:
    b, y = os.urandom(32), os.urandom(32)
    auth_key, subcred, cookie, rp_key = (
        os.urandom(32),
        os.urandom(32),
        os.urandom(20),
        os.urandom(32),
    )
    specs = G_RP_SPECS + [LinkSpecifier(1, os.urandom(18))][: n_specs - 3]
    pow_ext = pow_extension(os.urandom(16), 1234, os.urandom(32), os.urandom(16))
    state, body = build_introduce1(
        auth_key, xpub(b), subcred, cookie, rp_key, specs, extensions=[(1, b""), pow_ext]
    )
    assert len(body) <= 498
    plain, reply, seed = service_handle_introduce2(body, b, subcred, y)
    assert plain.startswith(cookie + b"\x02\x01\x00\x02\x29\x01")
    assert complete_rendezvous(state, reply) == expand_keys(seed)  # type: ignore[arg-type]


def test_state_repr_hides_private_key() -> None:
    state, _ = build_g()
    assert G_x.hex() not in repr(state) and G_x.hex().upper() not in repr(state)


def test_input_checks() -> None:
    with pytest.raises(ValueError):
        build_introduce1(G_AUTH_KEY, G_B, G_SUBCRED, b"short", G_RP_KEY, G_RP_SPECS)
    with pytest.raises(ValueError):  # cannot fit a relay message
        build_introduce1(
            G_AUTH_KEY, G_B, G_SUBCRED, G_COOKIE, G_RP_KEY, [LinkSpecifier(9, bytes(255))] * 2
        )


def test_introduce_ack() -> None:
    assert parse_introduce_ack(b"\x00\x00\x00") == IntroduceAckStatus.SUCCESS
    assert parse_introduce_ack(b"\x00\x02\x01\x07\x01\xff") == IntroduceAckStatus.BAD_FORMAT
    assert parse_introduce_ack(b"\x00\x09\x00") == 9
    for bad in (b"", b"\x00\x00", b"\x00\x00\x01", b"\x00\x00\x01\x01\x05ab"):
        with pytest.raises(RemoteProtocolError):
            parse_introduce_ack(bad)
