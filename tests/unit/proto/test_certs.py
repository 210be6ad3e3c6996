"""Ed25519 certs, the RSA->Ed25519 cross-cert and the CERTS check (tor-spec §4.2, cert-spec).

Real certificates: zydou/arti@cadcd0d (GitLab tpo/core/arti mirror),
crates/tor-proto/src/channel/handshake.rs ``mod certs`` (a chutney relay's CERTS
cell, C tor 0.4.5; valid at 2020-09-26T18:01:20Z, TLS cert given as its SHA-256)
and crates/tor-cert/tests/{testvec_certs,invalid_certs}.rs. Everything else uses
the synthetic chain from ``certgen``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import certgen
import pytest
from certgen import DAY, HOUR, RelayChain, ed_pub, make_ed25519_cert, make_relay_chain
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from hypothesis import given
from hypothesis import strategies as st

from puretor.errors import CertsError, ProtocolError
from puretor.proto.certs import (
    CertExtension,
    RelayIdentity,
    parse_ed25519_cert,
    parse_rsa_ed_crosscert,
    validate_relay_certs,
    validate_relay_certs_with_digest,
    verify_rsa_ed_crosscert,
)


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- Arti's real certificates ----------------------------------------------------------

CERT_T2 = h(
    "308201B930820122A0030201020208607C28BE6C390943300D06092A864886F70D01010B0500301F311D30"
    "1B06035504030C147777772E74636A76356B766A646472322E636F6D301E170D32303038313030303030"
    "30305A170D3231303831303030303030305A301F311D301B06035504030C147777772E74636A76356B76"
    "6A646472322E636F6D30819F300D06092A864886F70D010101050003818D0030818902818100D38B1E6C"
    "EB946E0DB0751F4CBACE3DCB9688B6C25304227B4710C35AFB73627E50500F5913E158B621802612D1C7"
    "5827003703338375237552EB3CD3C12F6AB3604E60C1A2D26BB1FBAD206FF023969A90909D6A65A5458A"
    "5312C26EBD3A3DAD30302D4515CDCD264146AC18E6FC60A04BD3EC327F04294D96BA5AA25B464C3F0203"
    "010001300D06092A864886F70D01010B0500038181003BCE561EA7F95CC00B78AAB5D69573FF301C282A"
    "751D4A651921D042F1BECDBA24D918A6D8A5E138DC07BBA0B335478AE37ABD2C93A93932442AE9084329"
    "E846170FE0FC4A50AAFC804F311CC3CA4F41D845A7BA5901CBBC3E021E9794AAC70CE1F37B0A951592DB"
    "1B64F2B4AFB81AE52DBD9B6FEDE96A5FB8125EB6251EE50A"
)
CERT_T4 = h(
    "01 04 0006CC2A 01 F82294B866A31F01FC5D0DA8572850A9B929545C3266558D7D2316E3B74172B0"
    "01 0020 04 00 DCB604DB2034B00FD16986D4ADB9D16B21CB4E4457A33DEC0F538903683E96E9"
    "FF1A5203FA27F86EF7528D89A0845D2520166E340754FFEA2AAE0F612B7CE5DA"
    "094A0236CDAC45034B0B6842C18E7F6B51B93A3CF7E60663B8AD061C30A62602"
)
CERT_T5 = h(
    "01 05 0006C98A 03 B4FD606B64E4CBD466B8D76CB131069BAE6F3AA1878857C9F624E31D77A799B8 00"
    "7173E5F8068431D0D3F5EE16B4C9FFD59DF373E152A87281BAE744AA5FCF7217"
    "1BF4B27C4E8FC1C6A9FC5CA11058BC49647063D7903CFD9F512F89099B27BC0C"
)
CERT_T7 = h(
    "DCB604DB2034B00FD16986D4ADB9D16B21CB4E4457A33DEC0F538903683E96E9 0006DA3A 80"
    "5CF6006F9179066534DE6B45AD47A5C469063EE462762723396DC9F25452A0A5"
    "2DA3F5087DD239F2A311F6B0D4DFEFF4ABD089DC3D0237A0ABAB19EB2045B91C"
    "DCAF04BE0A72D548A27BF2E77BD876ECFE5E1BE622350DA6BF31F6E306ED8964"
    "88DD5B39409B23FC3EB7B2C9F7328EB18DA36D54D80575899EA6507CCBFCDF1F"
)
PEER_CERT_DIGEST = h("b4fd606b64e4cbd466b8d76cb131069bae6f3aa1878857c9f624e31d77a799b8")
PEER_ED = h("dcb604db2034b00fd16986d4adb9d16b21cb4e4457a33dec0f538903683e96e9")
PEER_RSA = h("2f1fb49bb332a9eec617e41e911c33fb3890aef3")
SIGNING_KEY = h("F82294B866A31F01FC5D0DA8572850A9B929545C3266558D7D2316E3B74172B0")
ARTI_NOW = ts("2020-09-26T18:01:20")
ARTI_CERTS = [(2, CERT_T2), (5, CERT_T5), (7, CERT_T7), (4, CERT_T4)]


def arti_check(certs: list[tuple[int, bytes]], **kw: object) -> RelayIdentity:
    args: dict[str, object] = {
        "now": ARTI_NOW,
        "expected_rsa_id": PEER_RSA,
        "expected_ed_id": PEER_ED,
        "tls_cert_sha256": PEER_CERT_DIGEST,
    }
    args.update(kw)
    return validate_relay_certs_with_digest(certs, **args)  # type: ignore[arg-type]


def munge(b: bytes) -> bytes:
    return b[:-1] + bytes((b[-1] ^ 0x10,))


def test_arti_certs_good() -> None:
    assert arti_check(ARTI_CERTS) == RelayIdentity(PEER_RSA, PEER_ED)
    # Identities need not be known in advance (bootstrap knows only the RSA id).
    assert arti_check(ARTI_CERTS, expected_rsa_id=None, expected_ed_id=None).ed_id == PEER_ED


@pytest.mark.parametrize(
    ("omit", "what"), [(2, "type 2"), (7, "type 7"), (4, "type 4"), (5, "type 5")]
)
def test_arti_certs_missing(omit: int, what: str) -> None:
    with pytest.raises(CertsError, match=f"lacks .*{what}"):
        arti_check([c for c in ARTI_CERTS if c[0] != omit])


def test_arti_certs_wrong_target() -> None:
    with pytest.raises(CertsError, match="Ed25519 identity .* is not the expected"):
        arti_check(ARTI_CERTS, expected_ed_id=b"\x10" * 32)
    with pytest.raises(CertsError, match="RSA identity .* is not the expected"):
        arti_check(ARTI_CERTS, expected_rsa_id=b"\x99" * 20)
    with pytest.raises(CertsError, match="does not certify the TLS certificate"):
        arti_check(ARTI_CERTS, tls_cert_sha256=bytes(32))


def test_arti_certs_bad_signatures() -> None:
    with pytest.raises(CertsError, match="type 5.*bad Ed25519 signature"):
        arti_check([(2, CERT_T2), (5, munge(CERT_T5)), (7, CERT_T7), (4, CERT_T4)])
    with pytest.raises(CertsError, match="type 7.* not signed by the RSA identity"):
        arti_check([(2, CERT_T2), (5, CERT_T5), (7, munge(CERT_T7)), (4, CERT_T4)])


def test_arti_certs_expiry() -> None:
    # Type 5 expires 2020-09-28 18:00, type 4 on 2020-10-26 18:00 (Arti testvec_certs).
    arti_check(ARTI_CERTS, now=ts("2020-09-28T18:00:00"))
    with pytest.raises(CertsError, match="type 5.* expired at 2020-09-28 18:00:00"):
        arti_check(ARTI_CERTS, now=ts("2020-09-28T18:00:01"))


def test_arti_certs_cell_with_type_1() -> None:
    # Arti testvec_chanmsg test_certs: a relay also sends its type-1 link cert; ignored.
    extra = [(1, b"\x30\x00")]
    assert arti_check(ARTI_CERTS + extra).rsa_id == PEER_RSA


def test_arti_ed25519_cert_fields() -> None:
    c4 = parse_ed25519_cert(CERT_T4)
    assert (c4.cert_type, c4.key_type, c4.certified_key) == (4, 1, SIGNING_KEY)
    assert c4.signed_with == PEER_ED
    assert c4.extensions == (CertExtension(4, 0, PEER_ED),)
    assert c4.expires_at == ts("2020-10-26T18:00:00")
    assert c4.signed_part == CERT_T4[:-64] and c4.signature == CERT_T4[-64:]
    c4.verify()
    c4.verify(PEER_ED)
    assert not c4.is_expired(ts("2020-10-26T18:00:00"))
    # Arti invalid_certs expired_cert: a day after expiry.
    assert c4.is_expired(ts("2020-10-27T18:00:00"))

    c5 = parse_ed25519_cert(CERT_T5)
    assert (c5.cert_type, c5.key_type, c5.certified_key) == (5, 3, PEER_CERT_DIGEST)
    assert c5.signed_with is None and c5.extensions == ()
    assert c5.expires_at == ts("2020-09-28T18:00:00")
    c5.verify(SIGNING_KEY)
    with pytest.raises(CertsError, match="no signing key"):
        c5.verify()


def test_arti_mismatched_signing_key() -> None:
    not_that_key = h("DCB604DB2034B00FD16986D4ADB9D16B21CB4E4457A33DEC0F538903683E96CC")
    with pytest.raises(CertsError, match="names signing key"):
        parse_ed25519_cert(CERT_T4).verify(not_that_key)
    with pytest.raises(CertsError, match="bad Ed25519 signature"):
        parse_ed25519_cert(CERT_T5).verify(not_that_key)


def test_arti_invalid_certs() -> None:
    with pytest.raises(CertsError, match="version"):
        parse_ed25519_cert(h("03"))  # Arti: "Unrecognized certificate version"
    # signed-with extension of 33 bytes
    bad_len = CERT_T4[:40] + h("0021 04 00") + PEER_ED + h("FF") + CERT_T4[-64:]
    with pytest.raises(CertsError, match="signed-with"):
        parse_ed25519_cert(bad_len)
    # unknown extension type 9 with AFFECTS_VALIDATION
    critical = CERT_T4[:40] + h("0020 09 01") + PEER_ED + CERT_T4[-64:]
    with pytest.raises(CertsError, match="affects validation"):
        parse_ed25519_cert(critical)


def test_arti_rsa_crosscert() -> None:
    pk = load_der_public_key(
        h(
            "30818902818100d38b1e6ceb946e0db0751f4cbace3dcb9688b6c25304227b4710c35afb73627e50500f"
            "5913e158b621802612d1c75827003703338375237552eb3cd3c12f6ab3604e60c1a2d26bb1fbad206ff0"
            "23969a90909d6a65a5458a5312c26ebd3a3dad30302d4515cdcd264146ac18e6fc60a04bd3ec327f0429"
            "4d96ba5aa25b464c3f0203010001"
        )
    )
    wrong_pk = load_der_public_key(
        h(
            "30818902818100d38b1e6ceb946e0db0751f4cbace3dcb9688b6c25304227b4710c35afb73627e50500f"
            "5913e158b621802612d1c75827003703338375237552eb3cd3c12f6ab3604e60c1a2d26bb1fbad206ff0"
            "23969a90909d6a65a5458a5312c26ebd6a3dad30302d4515cdcd264146ac18e6fc60a04bd3ec327f0429"
            "4d96ba5aa25b464c3f0203010001"
        )
    )
    assert isinstance(pk, rsa.RSAPublicKey) and isinstance(wrong_pk, rsa.RSAPublicKey)
    cc = parse_rsa_ed_crosscert(CERT_T7)
    assert cc.ed_key == PEER_ED and len(cc.signature) == 128
    ed_key, exp_hours, sig = cc  # a plain tuple too
    assert exp_hours * 3600 > ARTI_NOW
    assert verify_rsa_ed_crosscert(cc, pk)
    assert not verify_rsa_ed_crosscert(cc, wrong_pk)


@pytest.mark.parametrize("data", [b"", bytes(36), CERT_T7 + b"\0", CERT_T7[:-1]])
def test_rsa_crosscert_bad_length(data: bytes) -> None:
    with pytest.raises(CertsError):
        parse_rsa_ed_crosscert(data)


# --- synthetic chains: every failure mode -------------------------------------------------

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def chain() -> RelayChain:
    return make_relay_chain(NOW)


def check(
    chain: RelayChain, certs: list[tuple[int, bytes]] | None = None, **kw: object
) -> RelayIdentity:
    args: dict[str, object] = {
        "tls_cert_der": chain.tls_cert_der,
        "now": NOW,
        "expected_rsa_id": chain.rsa_id,
        "expected_ed_id": chain.ed_id,
    }
    args.update(kw)
    return validate_relay_certs(chain.certs if certs is None else certs, **args)  # type: ignore[arg-type]


def replace(chain: RelayChain, ctype: int, body: bytes) -> list[tuple[int, bytes]]:
    return [(t, body if t == ctype else b) for t, b in chain.certs]


def test_synthetic_chain_is_valid(chain: RelayChain) -> None:
    assert check(chain) == RelayIdentity(chain.rsa_id, chain.ed_id)
    # Order in the cell does not matter.
    assert check(chain, list(reversed(chain.certs))).ed_id == chain.ed_id


def test_wrong_expected_identities(chain: RelayChain) -> None:
    with pytest.raises(CertsError, match="RSA identity"):
        check(chain, expected_rsa_id=bytes(20))
    with pytest.raises(CertsError, match="Ed25519 identity"):
        check(chain, expected_ed_id=bytes(32))


def test_tls_cert_mismatch(chain: RelayChain) -> None:
    other = certgen.make_x509(
        certgen.rsa_key(1024, 1), certgen.rsa_key(1024, 1), NOW - DAY, NOW + DAY
    )
    with pytest.raises(CertsError, match="does not certify the TLS certificate"):
        check(chain, tls_cert_der=other)


@pytest.mark.parametrize("ctype", [2, 4, 5, 7])
def test_missing_cert(chain: RelayChain, ctype: int) -> None:
    with pytest.raises(CertsError, match=f"lacks .*type {ctype}"):
        check(chain, [c for c in chain.certs if c[0] != ctype])


@pytest.mark.parametrize("ctype", [2, 4, 5, 7, 1])
def test_duplicate_cert_type(chain: RelayChain, ctype: int) -> None:
    body = dict(chain.certs).get(ctype, b"x")
    with pytest.raises(CertsError, match=f"more than one certificate of type {ctype}"):
        check(chain, [*chain.certs, (ctype, body), (ctype, body)])


def test_rsa_identity_cert_problems(chain: RelayChain) -> None:
    k = chain.rsa_identity_key
    big = certgen.rsa_key(2048, 0)
    cases: list[tuple[bytes, str]] = [
        (b"not a certificate", "not a usable X.509"),
        (certgen.make_x509(big, big, NOW - DAY, NOW + DAY), "1024-bit"),
        (certgen.make_x509(k, certgen.rsa_key(1024, 1), NOW - DAY, NOW + DAY), "self-signed"),
        # Beyond C tor's slop: 2 days past notAfter, 30 days before notBefore.
        (certgen.make_x509(k, k, NOW - 10 * DAY, NOW - 2 * DAY - 1), "expired"),
        (certgen.make_x509(k, k, NOW + 30 * DAY + 1, NOW + 90 * DAY), "not valid before"),
    ]
    for body, what in cases:
        with pytest.raises(CertsError, match=f"type 2.*{what}"):
            check(chain, replace(chain, 2, body))


def test_rsa_identity_cert_lifetime_slop(chain: RelayChain) -> None:
    k = chain.rsa_identity_key
    for nb, na in [(NOW - 10 * DAY, NOW - 2 * DAY + 1), (NOW + 30 * DAY - 1, NOW + 90 * DAY)]:
        check(chain, replace(chain, 2, certgen.make_x509(k, k, nb, na)))


def test_crosscert_problems(chain: RelayChain) -> None:
    ed = chain.ed_id
    exp = int(NOW // HOUR) + 10
    other_rsa = certgen.rsa_key(1024, 1)
    with pytest.raises(CertsError, match="type 7.*not signed by the RSA identity"):
        check(chain, replace(chain, 7, certgen.make_rsa_ed_crosscert(ed, other_rsa, exp)))
    with pytest.raises(CertsError, match="type 7.*expired"):
        old = certgen.make_rsa_ed_crosscert(ed, chain.rsa_identity_key, int(NOW // HOUR) - 1)
        check(chain, replace(chain, 7, old))
    with pytest.raises(CertsError, match="type 7.*wrong length"):
        check(chain, replace(chain, 7, chain.cert_crosscert + b"\0"))


def test_crosscert_for_another_ed_identity(chain: RelayChain) -> None:
    # Type 7 certifies a different Ed25519 identity than the one that signed type 4.
    stranger = ed_pub(ed25519.Ed25519PrivateKey.generate())
    cc = certgen.make_rsa_ed_crosscert(stranger, chain.rsa_identity_key, int(NOW // HOUR) + 10)
    with pytest.raises(CertsError, match="type 4.*names signing key"):
        check(chain, replace(chain, 7, cc), expected_ed_id=None)


def test_id_signing_cert_problems(chain: RelayChain) -> None:
    exp = int(NOW // HOUR) + 10
    sign_pub = ed_pub(chain.ed_signing_key)
    imposter = ed25519.Ed25519PrivateKey.generate()
    # Signed by another key but claiming the real identity in its extension.
    forged = make_ed25519_cert(4, sign_pub, imposter, exp, include_signed_with=False)
    forged = (
        forged[:39] + b"\x01" + (32).to_bytes(2, "big") + b"\x04\x00" + chain.ed_id + forged[40:]
    )
    cases: list[tuple[bytes, str]] = [
        (forged, "bad Ed25519 signature"),
        (
            make_ed25519_cert(4, sign_pub, chain.ed_identity_key, exp, include_signed_with=False),
            "lacks the signed-with",
        ),
        (make_ed25519_cert(4, sign_pub, chain.ed_identity_key, int(NOW // HOUR) - 1), "expired"),
        (make_ed25519_cert(6, sign_pub, chain.ed_identity_key, exp), "CERT_TYPE 6"),
        (chain.cert_id_signing[:-1], "bad Ed25519 signature|truncated|trailing"),
        (
            make_ed25519_cert(
                4, sign_pub, chain.ed_identity_key, exp, extra_extensions=((0x77, 1, b"hi"),)
            ),
            "affects validation",
        ),
    ]
    for body, what in cases:
        with pytest.raises(CertsError, match=f"type 4.*({what})"):
            check(chain, replace(chain, 4, body))


def test_link_cert_problems(chain: RelayChain) -> None:
    exp = int(NOW // HOUR) + 10
    digest = hashlib.sha256(chain.tls_cert_der).digest()
    cases: list[tuple[bytes, str]] = [
        (
            make_ed25519_cert(5, digest, chain.ed_identity_key, exp, include_signed_with=False),
            "bad Ed25519 signature",
        ),
        (make_ed25519_cert(5, digest, chain.ed_identity_key, exp), "names signing key"),
        (make_ed25519_cert(5, digest, chain.ed_signing_key, int(NOW // HOUR) - 1), "expired"),
        (make_ed25519_cert(4, digest, chain.ed_signing_key, exp), "CERT_TYPE 4"),
    ]
    for body, what in cases:
        with pytest.raises(CertsError, match=f"type 5.*{what}"):
            check(chain, replace(chain, 5, body))


def test_tolerated_variations(chain: RelayChain) -> None:
    exp = int(NOW // HOUR) + 10
    digest = hashlib.sha256(chain.tls_cert_der).digest()
    ok = [
        # Pre-0.4.5 relays wrote CERT_KEY_TYPE 01 for the link cert (cert-spec A.4);
        # a signed-with extension naming the right key is fine; so is an unknown
        # extension without AFFECTS_VALIDATION.
        make_ed25519_cert(5, digest, chain.ed_signing_key, exp, key_type=1),
        make_ed25519_cert(
            5, digest, chain.ed_signing_key, exp, extra_extensions=((0x77, 0, b"hi"),)
        ),
    ]
    for body in ok:
        assert check(chain, replace(chain, 5, body)).ed_id == chain.ed_id
    # Unknown CERTS types are ignored.
    assert check(chain, [*chain.certs, (200, b"whatever")]).rsa_id == chain.rsa_id


def test_certs_error_is_a_protocol_error(chain: RelayChain) -> None:
    with pytest.raises(ProtocolError):
        check(chain, [])


def test_certgen_payload_decodes(chain: RelayChain) -> None:
    from puretor.proto.cells import decode_certs

    assert decode_certs(chain.certs_payload()) == chain.certs


# --- properties ---------------------------------------------------------------------

_SIGNER = ed25519.Ed25519PrivateKey.generate()
_exts = st.lists(
    st.tuples(
        st.integers(0, 255).filter(lambda t: t != 4),
        st.integers(0, 255).map(lambda f: f & ~1),
        st.binary(max_size=40),
    ),
    max_size=4,
)


@given(
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.binary(min_size=32, max_size=32),
    st.booleans(),
    _exts,
)
def test_ed25519_cert_roundtrip(
    cert_type: int,
    exp: int,
    key_type: int,
    key: bytes,
    signed_with: bool,
    exts: list[tuple[int, int, bytes]],
) -> None:
    raw = make_ed25519_cert(
        cert_type,
        key,
        _SIGNER,
        exp,
        key_type=key_type,
        include_signed_with=signed_with,
        extra_extensions=tuple(exts),
    )
    c = parse_ed25519_cert(raw)
    assert (c.cert_type, c.expiration_hours, c.key_type, c.certified_key) == (
        cert_type,
        exp,
        key_type,
        key,
    )
    assert c.signed_with == (ed_pub(_SIGNER) if signed_with else None)
    assert [(e.ext_type, e.flags, e.data) for e in c.extensions if e.ext_type != 4] == exts
    c.verify(ed_pub(_SIGNER))


Parser = Callable[[bytes], object]


@given(st.binary(max_size=300))
def test_parsers_only_raise_certs_error(data: bytes) -> None:
    parsers: list[Parser] = [parse_ed25519_cert, parse_rsa_ed_crosscert]
    for parse in parsers:
        with contextlib.suppress(CertsError):
            parse(data)


@given(
    st.lists(st.tuples(st.sampled_from([1, 2, 4, 5, 7, 9]), st.binary(max_size=200)), max_size=6)
)
def test_validate_only_raises_certs_error(certs: list[tuple[int, bytes]]) -> None:
    with contextlib.suppress(CertsError):
        validate_relay_certs(certs, b"tls", NOW, None, None)
