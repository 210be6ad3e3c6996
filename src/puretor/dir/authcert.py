"""Directory authority key certificates (dir-spec §3.1).

An authority's long-term *identity* key (whose SHA-1 is its ``v3ident``)
certifies a medium-term *signing* key; consensuses are signed with the signing
key.  A certificate is only usable once `AuthCert.verify` has checked:

* SHA-1(DER identity key) == ``fingerprint``;
* the ``dir-key-certification`` signature: identity key over SHA-1 of the text
  from ``dir-key-certificate-version`` through the newline after
  ``dir-key-certification`` (dir-spec §1.3);
* the ``dir-key-crosscert``: signing key over SHA-1(DER identity key);
* ``dir-key-published`` <= now (+ skew) < ``dir-key-expires``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from puretor.dir.netdoc import Item, check_unique, parse_datetime, tokenize
from puretor.errors import DocumentError
from puretor.proto.tor_rsa import tor_rsa_verify

__all__ = ["AuthCert", "parse_authcert", "parse_authcerts"]

_FIRST = "dir-key-certificate-version"
_LAST = "dir-key-certification"
_SINGLE = (
    _FIRST,
    "dir-address",
    "fingerprint",
    "dir-identity-key",
    "dir-key-published",
    "dir-key-expires",
    "dir-signing-key",
    "dir-key-crosscert",
    _LAST,
)
_REQUIRED = tuple(k for k in _SINGLE if k != "dir-address")
_HEX40 = re.compile(r"[0-9A-Fa-f]{40}")
# Clock skew tolerated on `dir-key-published` (dir-spec §3.1 "MAY tolerate some clock skew").
PUBLISHED_SKEW = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class AuthCert:
    """One parsed (not yet verified) authority key certificate."""

    fingerprint: bytes  # v3ident: SHA-1 of the DER identity key
    identity_key: rsa.RSAPublicKey = field(repr=False, compare=False)
    signing_key: rsa.RSAPublicKey = field(repr=False, compare=False)
    signing_key_digest: bytes  # SHA-1 of the DER signing key (named in directory-signature)
    published: datetime
    expires: datetime
    dir_address: tuple[str, int] | None
    raw: bytes = field(repr=False)  # the exact certificate text, for the cache
    # Computed at parse time; checked by verify():
    _identity_digest: bytes = field(repr=False, compare=False, default=b"")
    _signed_digest: bytes = field(repr=False, compare=False, default=b"")
    _certification: bytes = field(repr=False, compare=False, default=b"")
    _crosscert: bytes = field(repr=False, compare=False, default=b"")

    @property
    def key(self) -> tuple[bytes, bytes]:
        """(v3ident, signing-key digest): how a consensus signature names its cert."""
        return (self.fingerprint, self.signing_key_digest)

    def is_expired(self, now: float) -> bool:
        return now >= self.expires.timestamp()

    def verify(self, now: float) -> None:
        """Check identity, both signatures and the validity period; raise `DocumentError`."""
        fp = self.fingerprint.hex().upper()
        if self._identity_digest != self.fingerprint:
            raise DocumentError(f"authority cert {fp}: fingerprint is not the identity key digest")
        if not tor_rsa_verify(self.identity_key, self._signed_digest, self._certification):
            raise DocumentError(f"authority cert {fp}: bad dir-key-certification signature")
        if not tor_rsa_verify(self.signing_key, self._identity_digest, self._crosscert):
            raise DocumentError(f"authority cert {fp}: bad dir-key-crosscert signature")
        if self.published.timestamp() > now + PUBLISHED_SKEW:
            raise DocumentError(
                f"authority cert {fp}: published {self.published:%Y-%m-%d %H:%M:%S} is in the future"
            )
        if self.is_expired(now):
            raise DocumentError(f"authority cert {fp}: expired at {self.expires:%Y-%m-%d %H:%M:%S}")


def _load_rsa(item: Item) -> tuple[rsa.RSAPublicKey, bytes]:
    """An ``RSA PUBLIC KEY`` object, and SHA-1 of its PKCS#1 DER (spec-map §0.2)."""
    item.need_args(0)
    der = item.object_bytes("RSA PUBLIC KEY")
    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise item.error(f"unparseable RSA key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise item.error("not an RSA key")
    if key.key_size < 1024:
        raise item.error(f"RSA key too short ({key.key_size} bits)")
    return key, hashlib.sha1(der).digest()


def _parse_one(data: bytes, items: list[Item], what: str) -> AuthCert:
    if not items or items[0].keyword != _FIRST:
        raise DocumentError(f"{what}: does not start with {_FIRST!r}")
    if items[-1].keyword != _LAST:
        raise items[-1].error(f"{what} must end with {_LAST!r}")
    found = check_unique(items, _SINGLE, what)
    for kw in _REQUIRED:
        if kw not in found:
            raise DocumentError(f"{what}: missing {kw!r}")
    version = found[_FIRST]
    if version.arg(0) != "3":
        raise version.error(f"unsupported certificate version {version.args[0]!r}")

    fp_item = found["fingerprint"]
    fp_hex = fp_item.arg(0)
    if not _HEX40.fullmatch(fp_hex):
        raise fp_item.error("fingerprint must be 40 hex digits")
    identity_key, identity_digest = _load_rsa(found["dir-identity-key"])
    signing_key, signing_digest = _load_rsa(found["dir-signing-key"])
    published_item = found["dir-key-published"]
    published = parse_datetime(published_item, *published_item.need_args(2)[:2])
    expires_item = found["dir-key-expires"]
    expires = parse_datetime(expires_item, *expires_item.need_args(2)[:2])

    dir_address: tuple[str, int] | None = None
    if "dir-address" in found:
        addr_item = found["dir-address"]
        host, _, port = addr_item.arg(0).rpartition(":")
        if (
            not host
            or not (port.isascii() and port.isdigit() and len(port) <= 5)
            or not 0 < int(port) < 65536
        ):
            raise addr_item.error(f"bad IP:port {addr_item.args[0]!r}")
        dir_address = (host, int(port))

    # dir-spec §3.1: "ID " may be omitted from the cross-cert object's label.
    crosscert = found["dir-key-crosscert"].object_bytes("ID SIGNATURE", "SIGNATURE")
    last = found[_LAST]
    certification = last.object_bytes("SIGNATURE")
    # Signed text: from the first item through the newline after "dir-key-certification".
    signed_end = data.index(b"\n", last.start) + 1
    signed_digest = hashlib.sha1(data[items[0].start : signed_end]).digest()

    return AuthCert(
        fingerprint=bytes.fromhex(fp_hex),
        identity_key=identity_key,
        signing_key=signing_key,
        signing_key_digest=signing_digest,
        published=published,
        expires=expires,
        dir_address=dir_address,
        raw=data[items[0].start : items[-1].end],
        _identity_digest=identity_digest,
        _signed_digest=signed_digest,
        _certification=certification,
        _crosscert=crosscert,
    )


def parse_authcerts(data: bytes) -> list[AuthCert]:
    """Parse one or more concatenated certificates (``/tor/keys/...`` bodies, ``cached-certs``).

    Signatures are *not* checked here; call `AuthCert.verify` on each.
    """
    items = tokenize(data, what="authority certificate", annotations=True)
    if not items:
        raise DocumentError("authority certificate: empty document")
    certs: list[AuthCert] = []
    group: list[Item] = []
    for item in items:
        if item.keyword == _FIRST and group:
            certs.append(_parse_one(data, group, f"authority certificate #{len(certs) + 1}"))
            group = []
        group.append(item)
    certs.append(_parse_one(data, group, f"authority certificate #{len(certs) + 1}"))
    return certs


def parse_authcert(data: bytes) -> AuthCert:
    """Parse exactly one certificate."""
    certs = parse_authcerts(data)
    if len(certs) != 1:
        raise DocumentError(f"expected one authority certificate, got {len(certs)}")
    return certs[0]
