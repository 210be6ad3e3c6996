"""Build a synthetic but fully valid relay certificate chain (tor-spec §4.2, cert-spec).

For tests and fake relays: an RSA-1024 self-signed identity cert (CERTS type 2), an
Ed25519 identity, a type-7 RSA->Ed25519 cross-cert, a type-4 identity->signing cert
and a type-5 signing->TLS-link cert over a freshly made TLS certificate. Every
builder takes explicit parameters so a test can break exactly one thing.

    chain = make_relay_chain(now)
    validate_relay_certs(chain.certs, chain.tls_cert_der, now, chain.rsa_id, chain.ed_id)
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from puretor.proto.tor_rsa import rsa_key_digest

HOUR = 3600
DAY = 24 * HOUR


def ed_pub(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@functools.cache
def rsa_key(bits: int = 1024, which: int = 0) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make; tests share a few (``which`` picks a distinct one)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_x509(
    subject_key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    not_before: float,
    not_after: float,
    cn: str = "www.example.com",
    issuer_cn: str | None = None,
) -> bytes:
    """DER of an X.509 certificate for ``subject_key`` signed by ``issuer_key`` (SHA-256)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)])
    utc = datetime.UTC
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(not_before, utc))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after, utc))
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def make_ed25519_cert(
    cert_type: int,
    certified_key: bytes,
    signing_key: ed25519.Ed25519PrivateKey,
    expiration_hours: int,
    *,
    key_type: int = 1,
    include_signed_with: bool = True,
    extra_extensions: tuple[tuple[int, int, bytes], ...] = (),
) -> bytes:
    """An Ed25519 certificate (cert-spec §2.1); extensions are (type, flags, data)."""
    exts = list(extra_extensions)
    if include_signed_with:
        exts.insert(0, (0x04, 0, ed_pub(signing_key)))
    body = struct.pack("!BBIB", 1, cert_type, expiration_hours, key_type) + certified_key
    body += bytes((len(exts),))
    for etype, flags, data in exts:
        body += struct.pack("!HBB", len(data), etype, flags) + data
    return body + signing_key.sign(body)


def make_rsa_ed_crosscert(
    ed_key: bytes, rsa_signing_key: rsa.RSAPrivateKey, expiration_hours: int
) -> bytes:
    """Type-7 cross-cert (cert-spec §2.3): PKCS#1 v1.5 over a raw SHA-256, no DigestInfo."""
    signed = ed_key + struct.pack("!I", expiration_hours)
    digest = hashlib.sha256(b"Tor TLS RSA/Ed25519 cross-certificate" + signed).digest()
    sig = _rsa_sign_raw(rsa_signing_key, digest)
    return signed + bytes((len(sig),)) + sig


def _rsa_sign_raw(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """Tor-style RSA signature: EMSA-PKCS1-v1_5 type-1 padding around the bare digest."""
    k = key.key_size // 8
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(digest)) + b"\x00" + digest
    d = key.private_numbers().d
    n = key.private_numbers().public_numbers.n
    return pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")


def encode_certs_payload(certs: list[tuple[int, bytes]]) -> bytes:
    """A CERTS cell payload (tor-spec §4.2)."""
    out = bytes((len(certs),))
    for ctype, body in certs:
        out += struct.pack("!BH", ctype, len(body)) + body
    return out


@dataclass
class RelayChain:
    rsa_identity_key: rsa.RSAPrivateKey
    ed_identity_key: ed25519.Ed25519PrivateKey
    ed_signing_key: ed25519.Ed25519PrivateKey
    tls_key: rsa.RSAPrivateKey
    tls_cert_der: bytes
    cert_rsa_id: bytes  # type 2
    cert_id_signing: bytes  # type 4
    cert_signing_link: bytes  # type 5
    cert_crosscert: bytes  # type 7
    extra: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def rsa_id(self) -> bytes:
        return rsa_key_digest(self.rsa_identity_key.public_key())

    @property
    def ed_id(self) -> bytes:
        return ed_pub(self.ed_identity_key)

    @property
    def certs(self) -> list[tuple[int, bytes]]:
        """The CERTS list in the order C tor sends it (1 is omitted; relays also send it)."""
        return [
            (2, self.cert_rsa_id),
            (4, self.cert_id_signing),
            (5, self.cert_signing_link),
            (7, self.cert_crosscert),
            *self.extra,
        ]

    def certs_payload(self) -> bytes:
        return encode_certs_payload(self.certs)

    def tls_cert_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.tls_cert_der).public_bytes(
            serialization.Encoding.PEM
        )

    def tls_key_pem(self) -> bytes:
        return self.tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )


def make_relay_chain(
    now: float,
    *,
    rsa_identity_key: rsa.RSAPrivateKey | None = None,
    ed_identity_key: ed25519.Ed25519PrivateKey | None = None,
    lifetime_hours: int = 48,
) -> RelayChain:
    """A valid chain around ``now``; keys are fresh unless given."""
    rsa_id_key = rsa_identity_key or rsa_key(1024, 0)
    tls_key = rsa_key(2048, 0)
    ed_id_key = ed_identity_key or ed25519.Ed25519PrivateKey.generate()
    ed_sign_key = ed25519.Ed25519PrivateKey.generate()
    exp = int(now // HOUR) + lifetime_hours
    tls_der = make_x509(tls_key, tls_key, now - DAY, now + 365 * DAY, cn="www.tlslink.net")
    return RelayChain(
        rsa_identity_key=rsa_id_key,
        ed_identity_key=ed_id_key,
        ed_signing_key=ed_sign_key,
        tls_key=tls_key,
        tls_cert_der=tls_der,
        cert_rsa_id=make_x509(rsa_id_key, rsa_id_key, now - DAY, now + 365 * DAY),
        cert_id_signing=make_ed25519_cert(4, ed_pub(ed_sign_key), ed_id_key, exp),
        cert_signing_link=make_ed25519_cert(
            5,
            hashlib.sha256(tls_der).digest(),
            ed_sign_key,
            exp,
            key_type=3,
            include_signed_with=False,
        ),
        cert_crosscert=make_rsa_ed_crosscert(ed_pub(ed_id_key), rsa_id_key, exp + 24 * 365),
    )
