"""Authority key certificates (dir-spec §3.1) against C-tor-generated vectors and tampering."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from dir_testlib import MD1_NOW, data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puretor.dir.authcert import parse_authcert, parse_authcerts
from puretor.dir.synth import make_authority
from puretor.errors import DocumentError

CERT_5696 = data("arti-dirmgr-cert-5696.txt")


def test_c_tor_certificate_parses_and_verifies() -> None:
    cert = parse_authcert(CERT_5696)
    assert cert.fingerprint.hex().upper() == "5696AB38CB3852AFA476A5C07B2D4788963D5567"
    assert cert.signing_key_digest.hex().upper() == "F6ED4AA64D83CAEDE34E19693A7FCF331AAE8A6A"
    assert cert.dir_address == ("127.0.0.1", 7001)
    assert cert.published == datetime(2020, 8, 7, 12, 40, 25, tzinfo=UTC)
    assert cert.expires == datetime(2021, 8, 7, 12, 40, 25, tzinfo=UTC)
    assert cert.identity_key.key_size == 3072
    assert cert.raw == CERT_5696
    cert.verify(MD1_NOW)


def test_concatenated_certificates() -> None:
    certs = parse_authcerts(data("arti-netdoc-authcerts2.txt"))
    assert len(certs) == 3
    for cert in certs:
        cert.verify(MD1_NOW)
    td2 = parse_authcerts(data("arti-testdata2-cached-certs"))  # C tor 0.4.9 cached-certs
    assert len(td2) == 4
    for cert in td2:
        cert.verify(datetime(2000, 6, 1, tzinfo=UTC).timestamp())
    with pytest.raises(DocumentError, match="expected one"):
        parse_authcert(data("arti-netdoc-authcerts2.txt"))


def test_validity_period() -> None:
    cert = parse_authcert(CERT_5696)
    with pytest.raises(DocumentError, match="expired at 2021-08-07 12:40:25"):
        cert.verify(cert.expires.timestamp())
    with pytest.raises(DocumentError, match="in the future"):
        cert.verify(cert.published.timestamp() - 2 * 86400)
    cert.verify(cert.published.timestamp() - 3600)  # a little clock skew is tolerated


def _tamper(doc: bytes, old: bytes, new: bytes) -> bytes:
    assert doc.count(old) == 1
    return doc.replace(old, new)


def test_tampered_text_fails_certification() -> None:
    bad = _tamper(CERT_5696, b"dir-key-expires 2021-08-07", b"dir-key-expires 2029-08-07")
    with pytest.raises(DocumentError, match="bad dir-key-certification signature"):
        parse_authcert(bad).verify(MD1_NOW)


def test_wrong_fingerprint() -> None:
    bad = _tamper(CERT_5696, b"fingerprint 5696AB", b"fingerprint 5696AC")
    with pytest.raises(DocumentError, match="fingerprint is not the identity key digest"):
        parse_authcert(bad).verify(MD1_NOW)


NOW_2025 = datetime(2025, 1, 1, tzinfo=UTC).timestamp()


def test_crosscert_label_may_omit_id() -> None:
    # dir-spec §3.1: "Implementations MUST allow the 'ID ' portion to be omitted".
    auth = make_authority(0, crosscert_label="SIGNATURE")
    assert b"-----BEGIN SIGNATURE-----" in auth.cert.split(b"dir-key-crosscert")[1][:40]
    parse_authcert(auth.cert).verify(NOW_2025)
    with pytest.raises(DocumentError, match="expected ID SIGNATURE or SIGNATURE"):
        parse_authcert(make_authority(0, crosscert_label="BOGUS").cert)


def test_crosscert_by_another_key_is_refused() -> None:
    auth = make_authority(0, crosscert_signer=make_authority(1).signing_key)
    with pytest.raises(DocumentError, match="bad dir-key-crosscert"):
        parse_authcert(auth.cert).verify(NOW_2025)


def test_synthetic_certificate_round_trip() -> None:
    auth = make_authority(2, published=datetime(2024, 1, 1, tzinfo=UTC))
    cert = parse_authcert(auth.cert)
    assert cert.fingerprint == auth.v3ident
    assert cert.signing_key_digest == auth.signing_key_digest
    cert.verify(datetime(2024, 6, 1, tzinfo=UTC).timestamp())
    with pytest.raises(DocumentError, match="expired"):
        cert.verify((datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=366)).timestamp())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ((b"dir-key-certificate-version 3", b"dir-key-certificate-version 4"), "version"),
        ((b"fingerprint 5696AB38", b"fingerprint 5696AB3"), "40 hex"),
        ((b"dir-signing-key\n", b"dir-signing-kez\n"), "missing 'dir-signing-key'"),
        ((b"dir-address 127.0.0.1:7001\n", b"dir-address nonsense\n"), "bad IP:port"),
        ((b"dir-key-published 2020-08-07 12:40:25", b"dir-key-published 2020-08-07"), "needs"),
    ],
)
def test_malformed(edit: tuple[bytes, bytes], message: str) -> None:
    old, new = edit
    doc = _tamper(CERT_5696, old, new)
    with pytest.raises(DocumentError, match=message):
        parse_authcert(doc).verify(MD1_NOW)


def test_duplicate_and_order() -> None:
    lines = CERT_5696.split(b"\n")
    dup = b"\n".join(lines[:3] + [lines[2]] + lines[3:])
    with pytest.raises(DocumentError, match="duplicate 'fingerprint'"):
        parse_authcert(dup)
    with pytest.raises(DocumentError, match="does not start"):
        parse_authcert(b"fingerprint AB\n" + CERT_5696)
    with pytest.raises(DocumentError, match="must end with"):
        parse_authcert(CERT_5696 + b"extra-item\n")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutations(draw: st.DataObject) -> None:
    doc = bytearray(CERT_5696)
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = draw.draw(st.integers(0, max(0, len(doc) - 1)))
        if op == "flip" and doc:
            doc[pos] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "delete":
            del doc[pos : pos + draw.draw(st.integers(1, 40))]
        elif op == "insert":
            doc[pos:pos] = draw.draw(st.binary(min_size=1, max_size=20))
        else:
            del doc[pos:]
    try:
        for cert in parse_authcerts(bytes(doc)):
            cert.verify(MD1_NOW)
    except DocumentError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random(data_: bytes) -> None:
    with contextlib.suppress(DocumentError):
        parse_authcerts(data_)
