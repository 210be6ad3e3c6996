"""Descriptor verification and decryption (rend-spec-v3 §2.4, §2.5)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hs_testlib import build_descriptor, intro_point_text, pub, xpub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puretor.errors import OnionError
from puretor.hs.descriptor import (
    HsDescriptorOuter,
    decode_descriptor,
    parse_inner,
    parse_outer,
)
from puretor.hs.keys import blind_public_key, subcredential
from puretor.proto.relaymsg import LinkSpecifier, encode_link_specifiers

DATA = Path(__file__).parent / "data"


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def code(exc: pytest.ExceptionInfo[OnionError]) -> int:
    return exc.value.socks_code


# Arti tor-netdoc src/doc/hsdesc.rs test_data: TEST_DATA_HS_BLIND_ID, TEST_SUBCREDENTIAL.
D1 = (DATA / "hsdesc1.txt").read_bytes()
D1_BLIND = bytes.fromhex("43cc0d62fc6252f578705ca645a46109e265290343b1137e90189744b20b3f2d")
D1_SUBCRED = bytes.fromhex("78210A0D2C72BB7A0CAF606BCD938B9A3696894FDDDBC3B87D424753A7E3DF37")
D1_NOW = t("2023-01-23 15:00:00")

# TEST_DATA_2 (client auth): TEST_HSID_2, period 19397, TEST_SECKEY_2 / TEST_PUBKEY_2.
D2 = (DATA / "hsdesc2.txt").read_bytes()
D2_HSID = bytes.fromhex("781D978CE6CE9CAA8BCA306F53E82D2C993E5C91346625F1C151DCFC56D753D3")
D2_SECKEY = bytes.fromhex("90F2D60F917F2423F0989CE9979639435A5B01CF7AB3E0A1B900BEB892BAE443")
D2_PUBKEY = bytes.fromhex("900467008E194C2C635A6E335E7724915E558CCB606C50094476F9731C129019")
D2_NOW = t("2023-02-09 12:00:00")


def decode1(**kw: object) -> object:
    args: dict[str, object] = {
        "blinded_key": D1_BLIND,
        "subcredential": D1_SUBCRED,
        "now": D1_NOW,
    }
    args.update(kw)
    body = args.pop("body", D1)
    return decode_descriptor(body, **args)  # type: ignore[arg-type]


def test_arti_hsdesc1() -> None:
    desc = decode1()
    assert desc.lifetime_minutes == 180  # type: ignore[attr-defined]
    assert desc.signing_cert_expires == int(t("2023-01-26 03:00:00").timestamp())  # type: ignore[attr-defined]
    assert desc.revision_counter == 19655750  # type: ignore[attr-defined]
    assert desc.intro_auth_required == () and not desc.single_onion_service  # type: ignore[attr-defined]
    assert desc.create2_formats == (2,)  # type: ignore[attr-defined]
    ips = desc.intro_points  # type: ignore[attr-defined]
    assert len(ips) == 3
    # Arti parse_desc_good: the first intro point's ntor key.
    assert ips[0].onion_key.hex().upper() == (
        "553BF9F9E1979D6F5D5D7D20BB3FE7272E32E22B6E86E35C76A7CA8A377E402F"
    )
    for ip in ips:
        assert [s.type for s in ip.link_specifiers] == [0, 2, 3]
        assert ip.spec(0) is not None and ip.spec(0)[:4] == b"\x7f\x00\x00\x01"  # type: ignore[index]
        assert len(ip.auth_key) == len(ip.enc_key) == 32


def test_arti_hsdesc1_rejections() -> None:
    with pytest.raises(OnionError) as exc:  # Arti parse_desc_good: wrong blinded id
        decode1(blinded_key=bytes([12]) * 32)
    assert code(exc) == 0xF1 and "blinded key" in str(exc.value)
    with pytest.raises(OnionError) as exc:  # signing-key cert has expired
        decode1(now=t("2023-01-26 03:00:01"))
    assert code(exc) == 0xF1 and "expired" in str(exc.value)
    with pytest.raises(OnionError) as exc:  # wrong subcredential: layer 1 MAC fails
        decode1(subcredential=bytes(32))
    assert code(exc) == 0xF1 and "MAC" in str(exc.value)
    with pytest.raises(OnionError) as exc:  # HSV3MaxDescriptorSize
        decode1(max_size=len(D1))
    assert code(exc) == 0xF1
    tampered = D1.replace(b"revision-counter 19655750", b"revision-counter 19655751")
    with pytest.raises(OnionError) as exc:
        decode1(body=tampered)
    assert "signature" in str(exc.value)


def test_arti_hsdesc2_client_auth() -> None:
    blind = blind_public_key(D2_HSID, 19397)
    sub = subcredential(D2_HSID, blind)
    assert xpub(D2_SECKEY) == D2_PUBKEY
    kw = {"blinded_key": blind, "subcredential": sub, "now": D2_NOW}
    with pytest.raises(OnionError) as exc:  # Arti parse_desc_auth_missing
        decode_descriptor(D2, **kw)  # type: ignore[arg-type]
    assert code(exc) == 0xF4
    with pytest.raises(OnionError) as exc:
        decode_descriptor(D2, client_auth_key=os.urandom(32), **kw)  # type: ignore[arg-type]
    assert code(exc) == 0xF5
    desc = decode_descriptor(D2, client_auth_key=D2_SECKEY, **kw)  # type: ignore[arg-type]
    assert len(desc.intro_points) == 3
    assert desc.flow_control is not None and desc.flow_control.sendme_inc == 31
    assert desc.supports_congestion_control


# -- second-layer documents -------------------------------------------------------------


def outer_for(signing_key: bytes) -> HsDescriptorOuter:
    return HsDescriptorOuter(bytes(32), signing_key, 0, 180, 1, b"")


def inner_signing_key(text: str) -> bytes:
    from puretor.hs._tokens import tokenize
    from puretor.proto.certs import parse_ed25519_cert

    item = next(i for i in tokenize(text) if i.keyword == "auth-key")
    return parse_ed25519_cert(item.obj or b"").signed_with or b""


def test_arti_inner() -> None:
    text = (DATA / "hsdesc-inner.txt").read_text()
    desc = parse_inner(text, outer_for(inner_signing_key(text)), t("2023-01-23 15:00:00"))
    assert len(desc.intro_points) == 3
    assert desc.flow_control is not None
    assert desc.flow_control.versions == {1, 2} and desc.flow_control.sendme_inc == 31
    assert desc.pow_params is None
    # with a different signing key, every intro point is dropped (C tor skips bad ones)
    assert parse_inner(text, outer_for(bytes(32)), t("2023-01-23 15:00:00")).intro_points == ()
    # Arti inner_text: without intro points (C tor accepts this: service "down")
    head = text.split("\nintroduction-point")[0] + "\n"
    assert parse_inner(head, outer_for(bytes(32)), t("2023-01-23 15:00:00")).intro_points == ()
    # more than 20 intro points: C tor rejects the descriptor (Arti truncates)
    ipt = "introduction-point" + text.rsplit("\nintroduction-point", 1)[1]
    many = head + ipt * 21
    with pytest.raises(OnionError):
        parse_inner(many, outer_for(inner_signing_key(text)), t("2023-01-23 15:00:00"))
    assert (
        len(
            parse_inner(
                head + ipt * 20, outer_for(inner_signing_key(text)), t("2023-01-23 15:00:00")
            ).intro_points
        )
        == 20
    )


POW_NOW = t("2024-04-10 00:00:00")


def test_arti_inner_pow_v1() -> None:
    text = (DATA / "hsdesc-inner-pow-v1.txt").read_text()
    desc = parse_inner(text, outer_for(inner_signing_key(text)), POW_NOW)
    assert desc.pow_params is not None
    # Arti inner_c_pow_v1
    assert desc.pow_params.suggested_effort == 614
    assert desc.pow_params.seed.hex() == (
        "144e901df0841833a6e8592190849b4412f307d1565f2f137b2a5bc21a31092a"
    )
    assert desc.pow_params.expires == 1712812537
    assert len(desc.intro_points) == 3


def test_arti_inner_pow_variants() -> None:
    text = (DATA / "hsdesc-inner-pow-v1.txt").read_text()
    key = inner_signing_key(text)
    head, tail = text.rsplit("\npow-params", 1)
    line, rest = tail.split("\n", 1)
    # unknown scheme next to v1: ignored (Arti inner_c_pow_v1_with_unknown)
    ok = f"{head}\npow-params x-example\npow-params{line}\n{rest}"
    assert parse_inner(ok, outer_for(key), POW_NOW).pow_params is not None
    # duplicate v1 (Arti inner_pow_duplicate)
    dup = f"{head}\npow-params{line}\npow-params{line}\n{rest}"
    with pytest.raises(OnionError):
        parse_inner(dup, outer_for(key), POW_NOW)
    # no scheme at all (Arti inner_pow_empty)
    empty = (DATA / "hsdesc-inner-pow-empty.txt").read_text()
    with pytest.raises(OnionError):
        parse_inner(empty, outer_for(inner_signing_key(empty)), POW_NOW)


def test_header_rules() -> None:
    text = (DATA / "hsdesc-inner.txt").read_text()
    key, now = inner_signing_key(text), t("2023-01-23 15:00:00")
    for bad in (
        text.replace("create2-formats 2", "create2-formats 3"),
        "single-onion-service\n" + text,
        text.replace("flow-control 1-2 31", "flow-control 1-2 0"),
        text.replace("flow-control 1-2 31", "flow-control 1-2 200"),
        text.replace("create2-formats 2\n", "create2-formats 2\nintro-auth-required password\n"),
    ):
        with pytest.raises(OnionError) as exc:
            parse_inner(bad, outer_for(key), now)
        assert code(exc) == 0xF1
    extra = text.replace(
        "create2-formats 2\n",
        "create2-formats 2 3\nintro-auth-required ed25519\nsingle-onion-service\nfuture-thing 1\n",
    )
    desc = parse_inner(extra, outer_for(key), now)
    assert desc.intro_auth_required == ("ed25519",) and desc.single_onion_service
    assert not parse_inner(
        text.replace("flow-control 1-2 31", "flow-control 1 31"), outer_for(key), now
    ).supports_congestion_control


# -- descriptors built here (service side in hs_testlib) ----------------------------------

BLIND = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
SIGNING = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
SUBCRED = b"\x03" * 32
NOW = t("2024-01-01 00:00:00")
EXP_HOURS = int(NOW.timestamp()) // 3600 + 3


def ip_text(i: int, **kw: object) -> str:
    specs = [
        LinkSpecifier(0, bytes([127, 0, 0, 1, 0x13, i])),
        LinkSpecifier(2, bytes([i]) * 20),
        LinkSpecifier(3, bytes([i]) * 32),
        LinkSpecifier(42, b"future"),  # unknown types are kept, verbatim
    ]
    args: dict[str, object] = {
        "link_specifiers": encode_link_specifiers(specs),
        "onion_key": bytes([i]) * 32,
        "auth_key": pub(Ed25519PrivateKey.from_private_bytes(bytes([i + 100]) * 32)),
        "enc_key": bytes([i + 1]) * 32,
    }
    args.update(kw)
    return intro_point_text(SIGNING, EXP_HOURS, **args)  # type: ignore[arg-type]


def built(inner: str, **kw: object) -> bytes:
    return build_descriptor(
        inner,
        blind=BLIND,
        signing=SIGNING,
        subcred=SUBCRED,
        exp_hours=EXP_HOURS,
        **kw,  # type: ignore[arg-type]
    )


def decode_built(body: bytes, **kw: object) -> object:
    return decode_descriptor(body, blinded_key=pub(BLIND), subcredential=SUBCRED, now=NOW, **kw)  # type: ignore[arg-type]


def test_built_descriptor_roundtrip() -> None:
    inner = "create2-formats 2\nflow-control 1-2 31\n" + ip_text(1) + ip_text(2, enc_cert=False)
    desc = decode_built(built(inner))
    ips = desc.intro_points  # type: ignore[attr-defined]
    assert [ip.onion_key[0] for ip in ips] == [1, 2]
    assert ips[0].link_specifiers[-1] == LinkSpecifier(42, b"future")
    assert ips[1].enc_key == bytes([3]) * 32


def test_built_descriptor_with_client_auth() -> None:
    mine, other = b"\x07" * 32, b"\x08" * 32
    body = built("create2-formats 2\n" + ip_text(1), client_pubkeys=(xpub(other), xpub(mine)))
    assert len(decode_built(body, client_auth_key=mine).intro_points) == 1  # type: ignore[attr-defined]
    assert len(decode_built(body, client_auth_key=other).intro_points) == 1  # type: ignore[attr-defined]
    for key, expected in ((None, 0xF4), (b"\x09" * 32, 0xF5)):
        with pytest.raises(OnionError) as exc:
            decode_built(body, client_auth_key=key)
        assert code(exc) == expected


def test_built_bad_intro_points_are_skipped() -> None:
    expired = intro_point_text(
        SIGNING,
        EXP_HOURS - 10,
        link_specifiers=encode_link_specifiers([LinkSpecifier(0, bytes(6))]),
        onion_key=bytes(32),
        auth_key=bytes(32),
        enc_key=bytes(32),
    )
    wrong_signer = intro_point_text(
        BLIND,
        EXP_HOURS,
        link_specifiers=encode_link_specifiers([LinkSpecifier(0, bytes(6))]),
        onion_key=bytes(32),
        auth_key=bytes(32),
        enc_key=bytes(32),
    )
    truncated_ls = ip_text(5, link_specifiers=b"\x02\x00\x06\x7f")
    no_ntor = ip_text(6).replace("enc-key ntor", "enc-key x448")
    inner = "create2-formats 2\n" + expired + wrong_signer + truncated_ls + no_ntor + ip_text(9)
    desc = decode_built(built(inner))
    assert [ip.onion_key[0] for ip in desc.intro_points] == [9]  # type: ignore[attr-defined]


def test_built_outer_rules() -> None:
    inner = "create2-formats 2\n" + ip_text(1)
    with pytest.raises(OnionError):
        decode_built(built(inner, lifetime=721))
    assert decode_built(built(inner, lifetime=720))
    assert decode_built(built(inner, revision=2**64 - 1)).revision_counter == 2**64 - 1  # type: ignore[attr-defined]
    body = built(inner)
    for bad in (
        body.replace(b"hs-descriptor 3", b"hs-descriptor 4"),
        body.replace(b"revision-counter 42", b"revision-counter -1"),
        body + b"extra-item\n",
        body.replace(b"descriptor-lifetime 180\n", b""),
        body.replace(b"\nsignature ", b"\nsignature x"),
    ):
        with pytest.raises(OnionError) as exc:
            decode_built(bad)
        assert code(exc) == 0xF1


def test_outer_only() -> None:
    outer = parse_outer(D1.decode(), blinded_key=D1_BLIND, now=D1_NOW)
    assert outer.revision_counter == 19655750 and len(outer.superencrypted) > 48


# -- fuzzing: nothing but OnionError may escape -----------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_descriptor(data: st.DataObject) -> None:
    body = bytearray(D1)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    try:
        decode1(body=bytes(body))
    except OnionError as e:
        assert e.socks_code in (0xF1, 0xF4, 0xF5)


INNER_FRAGMENTS = [
    *(DATA / "hsdesc-inner-pow-v1.txt").read_text().splitlines(),
    "introduction-point AAAA",
    "introduction-point",
    "onion-key ntor",
    "enc-key ntor AAAA",
    "auth-key",
    "-----BEGIN ED25519 CERT-----",
    "-----END ED25519 CERT-----",
    "-----BEGIN MESSAGE-----",
    "flow-control 1-2 31",
    "flow-control x- 31",
    "pow-params v1 AAAA 1 2024",
    "create2-formats 2",
    "",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(INNER_FRAGMENTS), max_size=40))
def test_fuzz_inner_text(lines: list[str]) -> None:
    try:
        parse_inner("\n".join(lines), outer_for(bytes(32)), NOW)
    except OnionError as e:
        assert e.socks_code == 0xF1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_outer_bytes(body: bytes) -> None:
    try:
        decode1(body=b"hs-descriptor 3\n" + body)
    except OnionError as e:
        assert e.socks_code == 0xF1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(INNER_FRAGMENTS + [ip_text(1), ip_text(2)]), max_size=12))
def test_fuzz_built_inner(lines: list[str]) -> None:
    try:
        desc = decode_built(built("\n".join(lines)))
    except OnionError as e:
        assert e.socks_code == 0xF1
    else:
        assert len(desc.intro_points) <= 20  # type: ignore[attr-defined]
