"""Tor certificates and the client's CERTS-cell check (tor-spec §4.2, cert-spec).

* :func:`parse_ed25519_cert` — the cert-spec §2.1 format (CERTS types 4/5/6, and
  the onion-service types 08/09/0B).
* :func:`parse_rsa_ed_crosscert` — the RSA→Ed25519 cross-certificate (§2.3, type 7).
* :func:`validate_relay_certs` — everything an initiator must check before it
  believes a relay has a given RSA + Ed25519 identity (spec-map §1.2).

Every failure raises :class:`~puretor.errors.CertsError` naming what failed.
Time is passed in (``now``, seconds since the epoch); nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from puretor.errors import CertsError
from puretor.proto.tor_rsa import rsa_key_digest, tor_rsa_verify

__all__ = [
    "CertExtension",
    "Ed25519Cert",
    "RelayIdentity",
    "RsaEdCrosscert",
    "parse_ed25519_cert",
    "parse_rsa_ed_crosscert",
    "validate_relay_certs",
    "validate_relay_certs_with_digest",
    "verify_rsa_ed_crosscert",
]

# CERTS cell cert types (tor-spec §4.2) / Ed25519 CERT_TYPE values (cert-spec A.1).
CERTTYPE_RSA_LINK = 1
CERTTYPE_RSA_ID = 2
CERTTYPE_ED_ID_SIGNING = 4
CERTTYPE_ED_SIGNING_LINK = 5
CERTTYPE_ED_SIGNING_AUTH = 6
CERTTYPE_RSA_ED_CROSSCERT = 7

EXT_SIGNED_WITH_ED25519_KEY = 0x04  # cert-spec §2.2.1
EXT_FLAG_AFFECTS_VALIDATION = 0x01  # cert-spec §2.1

CROSSCERT_PREFIX = b"Tor TLS RSA/Ed25519 cross-certificate"  # cert-spec §2.3

# [C-TOR] X.509 lifetime slop (x509_internal.h TOR_X509_PAST_SLOP / _FUTURE_SLOP).
X509_PAST_SLOP = 2 * 24 * 60 * 60
X509_FUTURE_SLOP = 30 * 24 * 60 * 60

_ED_HDR = struct.Struct("!BBIB32sB")  # VERSION CERT_TYPE EXPIRATION KEY_TYPE KEY N_EXT
_EXT_HDR = struct.Struct("!HBB")  # ExtLength ExtType ExtFlags
_CROSS_HDR = struct.Struct("!32sIB")  # ED25519_KEY EXPIRATION SIGLEN
_U32 = struct.Struct("!I")
_SIG_LEN = 64


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- Ed25519 certificates (cert-spec §2.1) ------------------------------------------------


@dataclass(frozen=True)
class CertExtension:
    ext_type: int
    flags: int
    data: bytes


@dataclass(frozen=True)
class Ed25519Cert:
    cert_type: int
    expiration_hours: int
    key_type: int  # 01 ed25519, 03 SHA-256 of X.509; pre-0.4.5 tor wrote 01 for all
    certified_key: bytes
    extensions: tuple[CertExtension, ...]
    signed_with: bytes | None  # the signed-with-ed25519-key extension, if present
    signature: bytes
    signed_part: bytes  # everything before the signature, exactly as received

    @property
    def expires_at(self) -> int:
        """Expiry in seconds since the epoch (EXPIRATION_DATE is in hours)."""
        return self.expiration_hours * 3600

    def is_expired(self, now: float) -> bool:
        return self.expires_at < now

    def verify(self, signing_key: bytes | None = None) -> None:
        """Check the signature by ``signing_key``, or by the key in the extension.

        If both are known they must agree (cert-spec §2.2.1: the extension MUST
        match the signing key). Raises CertsError.
        """
        key = signing_key if signing_key is not None else self.signed_with
        if key is None:
            raise CertsError(f"type-{self.cert_type} certificate: no signing key known")
        if self.signed_with is not None and not hmac.compare_digest(key, self.signed_with):
            raise CertsError(
                f"type-{self.cert_type} certificate names signing key {self.signed_with.hex()}, "
                f"expected {bytes(key).hex()}"
            )
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(key).verify(self.signature, self.signed_part)
        except (InvalidSignature, ValueError):
            raise CertsError(
                f"type-{self.cert_type} certificate has a bad Ed25519 signature"
            ) from None


def parse_ed25519_cert(data: bytes) -> Ed25519Cert:
    """Parse (but do not verify) an Ed25519 certificate. Raises CertsError.

    Rejected: version ≠ 1, truncation, trailing bytes (C tor requires an exact
    length), a signed-with extension that is not 32 bytes, and any unknown
    extension flagged AFFECTS_VALIDATION (cert-spec §2.1).
    """
    data = bytes(data)
    if data and data[0] != 1:
        raise CertsError(f"Ed25519 certificate has unknown version {data[0]}")
    if len(data) < _ED_HDR.size + _SIG_LEN:
        raise CertsError("Ed25519 certificate is truncated")
    _, cert_type, exp_hours, key_type, key, n_ext = _ED_HDR.unpack_from(data)
    pos = _ED_HDR.size
    end = len(data) - _SIG_LEN
    exts: list[CertExtension] = []
    signed_with: bytes | None = None
    for _ in range(n_ext):
        if pos + _EXT_HDR.size > end:
            raise CertsError(f"type-{cert_type} certificate: extension header truncated")
        ext_len, ext_type, flags = _EXT_HDR.unpack_from(data, pos)
        pos += _EXT_HDR.size
        if pos + ext_len > end:
            raise CertsError(f"type-{cert_type} certificate: extension {ext_type} truncated")
        ext_data = data[pos : pos + ext_len]
        pos += ext_len
        if ext_type == EXT_SIGNED_WITH_ED25519_KEY:
            if ext_len != 32 or signed_with is not None:
                raise CertsError(
                    f"type-{cert_type} certificate: bad signed-with-ed25519-key extension"
                )
            signed_with = ext_data
        elif flags & EXT_FLAG_AFFECTS_VALIDATION:
            raise CertsError(
                f"type-{cert_type} certificate: unknown extension {ext_type} affects validation"
            )
        exts.append(CertExtension(ext_type, flags, ext_data))
    if pos != end:
        raise CertsError(f"type-{cert_type} certificate has {end - pos} unexpected trailing bytes")
    return Ed25519Cert(
        cert_type=cert_type,
        expiration_hours=exp_hours,
        key_type=key_type,
        certified_key=key,
        extensions=tuple(exts),
        signed_with=signed_with,
        signature=data[end:],
        signed_part=data[:end],
    )


# -- RSA→Ed25519 cross-certificate (cert-spec §2.3) ----------------------------------------


class RsaEdCrosscert(NamedTuple):
    ed_key: bytes
    expiration_hours: int
    signature: bytes


def parse_rsa_ed_crosscert(data: bytes) -> RsaEdCrosscert:
    """``ED25519_KEY(32) EXPIRATION(4, hours) SIGLEN(1) SIGNATURE``, exact length (as C tor)."""
    data = bytes(data)
    if len(data) < _CROSS_HDR.size:
        raise CertsError("RSA->Ed25519 cross-certificate is truncated")
    ed_key, exp_hours, siglen = _CROSS_HDR.unpack_from(data)
    if len(data) != _CROSS_HDR.size + siglen:
        raise CertsError("RSA->Ed25519 cross-certificate has the wrong length")
    return RsaEdCrosscert(ed_key, exp_hours, data[_CROSS_HDR.size :])


def verify_rsa_ed_crosscert(cc: RsaEdCrosscert, rsa_pub: rsa.RSAPublicKey) -> bool:
    """RSA (no DigestInfo) signature over SHA256(prefix | ED25519_KEY | EXPIRATION)."""
    digest = hashlib.sha256(CROSSCERT_PREFIX + cc.ed_key + _U32.pack(cc.expiration_hours)).digest()
    return tor_rsa_verify(rsa_pub, digest, cc.signature)


# -- the client's CERTS check (tor-spec §4.2) -----------------------------------------------


@dataclass(frozen=True)
class RelayIdentity:
    rsa_id: bytes  # SHA-1 of the PKCS#1 DER identity key
    ed_id: bytes  # KP_relayid_ed


_NAMES = {
    CERTTYPE_RSA_ID: "RSA identity (type 2)",
    CERTTYPE_ED_ID_SIGNING: "Ed25519 identity->signing (type 4)",
    CERTTYPE_ED_SIGNING_LINK: "Ed25519 signing->link (type 5)",
    CERTTYPE_RSA_ED_CROSSCERT: "RSA->Ed25519 cross-certificate (type 7)",
}


def _rsa_identity(der: bytes, now: float) -> rsa.RSAPublicKey:
    """Type 2: self-signed X.509, in its validity window, with a 1024-bit RSA key."""
    name = _NAMES[CERTTYPE_RSA_ID]
    try:
        cert = x509.load_der_x509_certificate(der)
        pub = cert.public_key()
        alg = cert.signature_hash_algorithm
        not_before = cert.not_valid_before_utc.timestamp()
        not_after = cert.not_valid_after_utc.timestamp()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        # InvalidVersion (an unknown X.509 version number) is not a ValueError.
        raise CertsError(f"{name} is not a usable X.509 certificate: {exc}") from None
    if not isinstance(pub, rsa.RSAPublicKey) or pub.key_size != 1024:
        raise CertsError(f"{name} does not hold a 1024-bit RSA key")
    if alg is None:
        raise CertsError(f"{name} uses an unsupported signature algorithm")
    try:
        pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), alg)
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise CertsError(f"{name} is not correctly self-signed") from None
    if not_before > now + X509_FUTURE_SLOP:
        raise CertsError(f"{name} is not valid before {_iso(not_before)}")
    if not_after < now - X509_PAST_SLOP:
        raise CertsError(f"{name} expired at {_iso(not_after)}")
    return pub


def _ed_cert(body: bytes, cert_type: int, signing_key: bytes, now: float) -> Ed25519Cert:
    name = _NAMES[cert_type]
    try:
        cert = parse_ed25519_cert(body)
        if cert.cert_type != cert_type:
            raise CertsError(f"has CERT_TYPE {cert.cert_type}")
        cert.verify(signing_key)
    except CertsError as exc:
        raise CertsError(f"{name}: {exc}") from None
    if cert.is_expired(now):
        raise CertsError(f"{name} expired at {_iso(cert.expires_at)}")
    return cert


def validate_relay_certs(
    certs: Sequence[tuple[int, bytes]],
    tls_cert_der: bytes,
    now: float,
    expected_rsa_id: bytes | None = None,
    expected_ed_id: bytes | None = None,
) -> RelayIdentity:
    """Authenticate a responder's Ed25519 + RSA identity from its CERTS cell.

    ``tls_cert_der`` is the certificate the relay presented in TLS. Pass the
    identities you expect (consensus / fallback list); ``None`` skips that
    comparison but still checks the chain. Raises CertsError.
    """
    tls_digest = hashlib.sha256(tls_cert_der).digest()
    return validate_relay_certs_with_digest(certs, tls_digest, now, expected_rsa_id, expected_ed_id)


def validate_relay_certs_with_digest(
    certs: Sequence[tuple[int, bytes]],
    tls_cert_sha256: bytes,
    now: float,
    expected_rsa_id: bytes | None = None,
    expected_ed_id: bytes | None = None,
) -> RelayIdentity:
    """:func:`validate_relay_certs` given SHA-256 of the TLS certificate instead of its DER."""
    # 1. At most one cert per type; exactly one each of 2, 4, 5, 7 (tor-spec §4.2).
    by_type: dict[int, bytes] = {}
    for ctype, body in certs:
        if ctype in by_type:
            raise CertsError(f"CERTS cell has more than one certificate of type {ctype}")
        by_type[ctype] = body
    missing = [_NAMES[t] for t in _NAMES if t not in by_type]
    if missing:
        raise CertsError("CERTS cell lacks " + ", ".join(missing))

    # 2. Type 2: the RSA identity.
    rsa_pub = _rsa_identity(by_type[CERTTYPE_RSA_ID], now)
    rsa_id = rsa_key_digest(rsa_pub)
    if expected_rsa_id is not None and not hmac.compare_digest(rsa_id, expected_rsa_id):
        raise CertsError(
            f"relay RSA identity {rsa_id.hex()} is not the expected {bytes(expected_rsa_id).hex()}"
        )

    # 3. Type 7: the RSA key vouches for the Ed25519 identity.
    name = _NAMES[CERTTYPE_RSA_ED_CROSSCERT]
    try:
        cc = parse_rsa_ed_crosscert(by_type[CERTTYPE_RSA_ED_CROSSCERT])
    except CertsError as exc:
        raise CertsError(f"{name}: {exc}") from None
    if not verify_rsa_ed_crosscert(cc, rsa_pub):
        raise CertsError(f"{name} is not signed by the RSA identity key")
    if cc.expiration_hours * 3600 < now:
        raise CertsError(f"{name} expired at {_iso(cc.expiration_hours * 3600)}")
    ed_id = cc.ed_key

    # 4. Type 4: the Ed25519 identity signs the medium-term signing key, and says so
    # in its signed-with-ed25519-key extension (C tor: "No Ed25519 signing key").
    id_signing = _ed_cert(by_type[CERTTYPE_ED_ID_SIGNING], CERTTYPE_ED_ID_SIGNING, ed_id, now)
    if id_signing.signed_with is None:
        raise CertsError(
            f"{_NAMES[CERTTYPE_ED_ID_SIGNING]} lacks the signed-with-ed25519-key extension"
        )
    if expected_ed_id is not None and not hmac.compare_digest(ed_id, expected_ed_id):
        raise CertsError(
            f"relay Ed25519 identity {ed_id.hex()} is not the expected {bytes(expected_ed_id).hex()}"
        )

    # 5. Type 5: the signing key vouches for the TLS certificate we actually saw.
    link = _ed_cert(
        by_type[CERTTYPE_ED_SIGNING_LINK], CERTTYPE_ED_SIGNING_LINK, id_signing.certified_key, now
    )
    if not hmac.compare_digest(link.certified_key, tls_cert_sha256):
        raise CertsError(f"{_NAMES[CERTTYPE_ED_SIGNING_LINK]} does not certify the TLS certificate")

    return RelayIdentity(rsa_id=rsa_id, ed_id=ed_id)
