"""Control port authentication secrets (control-spec §3.5, §3.24), sans-I/O.

* ``HashedControlPassword 16:...``: RFC 2440 iterated and salted S2K over SHA-1, as
  ``tor --hash-password`` writes it (8 bytes salt, 1 byte count, 20 bytes digest, hex).
* Cookies: 32 random bytes in a file; SAFECOOKIE proves knowledge of the cookie with
  HMAC-SHA256 over cookie | client nonce | server nonce, keyed with control-spec's
  constants, without sending it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

COOKIE_LEN = 32
SERVER_NONCE_LEN = 32
S2K_SPECIFIER_LEN = 9  # salt (8) + count byte
_EXPBIAS = 6
DEFAULT_COUNT_BYTE = 96  # C tor's choice: 65536 bytes hashed
SAFECOOKIE_SERVER_CONSTANT = b"Tor safe cookie authentication server-to-controller hash"
SAFECOOKIE_CONTROLLER_CONSTANT = b"Tor safe cookie authentication controller-to-server hash"


def s2k_rfc2440(secret: bytes, specifier: bytes) -> bytes:
    """RFC 2440 §3.6.1.3 iterated and salted S2K with SHA-1 (C tor secret_to_key_rfc2440)."""
    salt, c = specifier[:8], specifier[8]
    count = (16 + (c & 15)) << ((c >> 4) + _EXPBIAS)
    block = salt + secret
    digest = hashlib.sha1()
    whole, rest = divmod(count, len(block))
    digest.update(block * whole)
    digest.update(block[:rest])
    return digest.digest()


def hash_password(password: bytes, salt: bytes | None = None) -> str:
    """A ``HashedControlPassword`` value: ``16:`` and 58 hex digits (``tor --hash-password``)."""
    specifier = (salt if salt is not None else os.urandom(8)) + bytes((DEFAULT_COUNT_BYTE,))
    return "16:" + (specifier + s2k_rfc2440(password, specifier)).hex().upper()


def parse_hashed_password(value: str) -> bytes:
    """The 29 bytes of a ``16:HEX`` (or base64) HashedControlPassword; ValueError if bad."""
    import base64
    import binascii

    want = S2K_SPECIFIER_LEN + 20
    text = value.strip()
    try:
        raw = bytes.fromhex(text[3:]) if text.startswith("16:") else base64.b64decode(text)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != want:
        raise ValueError("not a hashed password made by --hash-password ('16:' and 58 hex digits)")
    return raw


def password_matches(password: bytes, hashed: bytes) -> bool:
    """Does ``password`` hash to the 29-byte ``hashed`` (`parse_hashed_password`)?"""
    specifier, expected = hashed[:S2K_SPECIFIER_LEN], hashed[S2K_SPECIFIER_LEN:]
    return hmac.compare_digest(s2k_rfc2440(password, specifier), expected)


def safecookie_hashes(
    cookie: bytes, client_nonce: bytes, server_nonce: bytes
) -> tuple[bytes, bytes]:
    """(server hash we send in AUTHCHALLENGE, client hash AUTHENTICATE must carry)."""
    message = cookie + client_nonce + server_nonce
    server = hmac.new(SAFECOOKIE_SERVER_CONSTANT, message, hashlib.sha256).digest()
    client = hmac.new(SAFECOOKIE_CONTROLLER_CONSTANT, message, hashlib.sha256).digest()
    return server, client
