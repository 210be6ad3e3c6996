"""Tor's RSA conventions (tor-spec §0.3, dir-spec §1.3).

Tor signs a raw digest with PKCS#1 v1.5 type-1 padding and *no* ASN.1 DigestInfo,
and names an RSA key by the SHA-1 of its PKCS#1 ``RSAPublicKey`` DER encoding.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def rsa_key_digest(pub: rsa.RSAPublicKey) -> bytes:
    """SHA-1 of the PKCS#1 DER of ``pub``: a relay's RSA identity / an authority's v3ident."""
    return hashlib.sha1(pub.public_bytes(Encoding.DER, PublicFormat.PKCS1)).digest()


def tor_rsa_verify(pub: rsa.RSAPublicKey, digest: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``pub``'s Tor-style signature over ``digest``."""
    try:
        signed = pub.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return False
    # C tor only requires the recovered data to start with the digest.
    return len(signed) >= len(digest) and hmac.compare_digest(signed[: len(digest)], digest)
