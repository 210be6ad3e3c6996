"""v3 onion addresses (rend-spec-v3 §6 [ONIONADDRESS], §2.2.7).

    onion_address = base32(PUBKEY | CHECKSUM | VERSION) + ".onion"
    CHECKSUM      = SHA3-256(".onion checksum" | PUBKEY | VERSION)[:2]
    VERSION       = 0x03

`PUBKEY` is the service's 32-byte Ed25519 identity key ``A`` (KP_hs_id).  Every
failure raises :class:`~puretor.errors.OnionError` with SOCKS extended error
0xF6 ("onion service address is invalid", prop 304) and a message that says
what is wrong, so the SOCKS layer can pass both on unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import nacl.bindings
import nacl.exceptions

from puretor.errors import OnionError

__all__ = [
    "SOCKS_BAD_ADDRESS",
    "encode_onion_address",
    "is_onion_host",
    "onion_label",
    "parse_onion_address",
]

SOCKS_BAD_ADDRESS = 0xF6  # prop 304: "Onion Service Invalid Address"

VERSION = 3
_CHECKSUM_PREFIX = b".onion checksum"
_LABEL_LEN = 56  # base32 of 35 bytes, no padding


def _checksum(pubkey: bytes, version: int = VERSION) -> bytes:
    return hashlib.sha3_256(_CHECKSUM_PREFIX + pubkey + bytes([version])).digest()[:2]


def encode_onion_address(pubkey: bytes) -> str:
    """``A`` (32 bytes) → ``"<56 lower-case chars>.onion"``."""
    if len(pubkey) != 32:
        raise ValueError("an onion service identity key is 32 bytes")
    raw = pubkey + _checksum(pubkey) + bytes([VERSION])
    return base64.b32encode(raw).decode("ascii").lower() + ".onion"


def is_onion_host(host: str) -> bool:
    """True for any host name in the ``.onion`` TLD (valid or not).

    Callers use this to route a request to the onion-service code, which then
    reports *why* a malformed address is bad instead of a generic DNS error.
    """
    return host.rstrip(".").lower().endswith(".onion")


def onion_label(host: str) -> str:
    """The 56-character address label of ``[x.y.]<label>.onion``, lower-cased.

    Leading labels ("www.") are ignored, as C tor's parse_extended_hostname()
    does: only the label just left of ``.onion`` names the service.
    """
    name = host.rstrip(".").lower()
    if not name.endswith(".onion"):
        raise OnionError(f"{host!r} is not a .onion address", socks_code=SOCKS_BAD_ADDRESS)
    label = name[: -len(".onion")].rsplit(".", 1)[-1]
    if not label:
        raise OnionError(f"{host!r} has an empty onion label", socks_code=SOCKS_BAD_ADDRESS)
    return label


def parse_onion_address(host: str) -> bytes:
    """Validate a v3 onion host name and return the service identity key ``A``.

    Accepts ``<addr>.onion`` and ``x.y.<addr>.onion`` in any letter case (also
    the bare 56-character label).  Checks, in order: length, base32, version
    byte, checksum, and that ``A`` is a valid point of prime order (§2.2.7:
    keys with a torsion component would give several addresses for one
    service).
    """
    name = host.rstrip(".").lower()
    # A dot-free name is taken as a bare label (as in .auth_private files).
    label = name if "." not in name else onion_label(host)
    if len(label) != _LABEL_LEN:
        if len(label) == 16:
            why = "a v2 onion address (v2 onion services no longer exist)"
        else:
            why = f"{len(label)} characters long, a v3 address has {_LABEL_LEN}"
        raise OnionError(f"invalid onion address {host!r}: {why}", socks_code=SOCKS_BAD_ADDRESS)
    try:
        # No '=' padding in an address: a padded label decodes to fewer than 35 bytes.
        if "=" in label:
            raise ValueError("padding")
        raw = base64.b32decode(label, casefold=True)
    except (binascii.Error, ValueError):
        raise OnionError(
            f"invalid onion address {host!r}: not base32", socks_code=SOCKS_BAD_ADDRESS
        ) from None
    pubkey, checksum, version = raw[:32], raw[32:34], raw[34]
    if version != VERSION:
        raise OnionError(
            f"invalid onion address {host!r}: version {version}, only version 3 is supported",
            socks_code=SOCKS_BAD_ADDRESS,
        )
    if checksum != _checksum(pubkey, version):
        raise OnionError(
            f"invalid onion address {host!r}: bad checksum (mistyped?)",
            socks_code=SOCKS_BAD_ADDRESS,
        )
    if not _is_valid_identity_key(pubkey):
        raise OnionError(
            f"invalid onion address {host!r}: the key is not a valid Ed25519 point "
            "of prime order (torsion component)",
            socks_code=SOCKS_BAD_ADDRESS,
        )
    return pubkey


# The order of the prime-order subgroup (RFC 8032 "L").
_GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
_L_MINUS_1 = (_GROUP_ORDER - 1).to_bytes(32, "little")
_IDENTITY = (1).to_bytes(32, "little")


def _is_valid_identity_key(pubkey: bytes) -> bool:
    # libsodium's is_valid_point rejects non-canonical encodings and small-order
    # points; the libsodium that PyNaCl 1.5 bundles lets points with a torsion
    # component through, so check [L]P == identity as well (as [L-1]P + P).
    try:
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(pubkey):
            return False
        times = nacl.bindings.crypto_scalarmult_ed25519_noclamp(_L_MINUS_1, pubkey)
        return bool(nacl.bindings.crypto_core_ed25519_add(times, pubkey) == _IDENTITY)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.TypeError, ValueError):
        return False
