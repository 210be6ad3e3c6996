"""Client authorization keys: C tor's ``ClientOnionAuthDir`` (rend-spec-v3 App. G.1.3).

Each ``*.auth_private`` file in the directory holds one line::

    <56-char onion address>:descriptor:x25519:<base32 x25519 private key>

(C tor hs_client.c parse_auth_file_content(): exactly four ``:``-separated
fields, whitespace around them ignored, the key 52 base32 characters without
padding, not all zero).  Files with other names are ignored, as C tor does.
We also allow blank lines and ``#`` comments, and accept the address with or
without ``.onion``.  Reading a configuration directory is the one piece of
I/O in ``puretor.hs``; parsing (:func:`parse_auth_private`) and writing a
file's text (:func:`format_auth_private`) are separate.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from puretor.errors import ConfigError, OnionError
from puretor.hs.address import parse_onion_address

__all__ = [
    "AUTH_PRIVATE_SUFFIX",
    "AUTH_SUFFIX",
    "OnionClientAuth",
    "format_auth_private",
    "load_client_auth_dir",
    "parse_auth_private",
    "parse_authorized_client",
]

AUTH_PRIVATE_SUFFIX = ".auth_private"
AUTH_SUFFIX = ".auth"  # a service's authorized_clients/<name>.auth
_KEY_B32_LEN = 52  # BASE32_NOPAD_LEN(32)


@dataclass(frozen=True, slots=True)
class OnionClientAuth:
    """A client authorization key for one onion service (C tor's
    hs_client_service_authorization_t, as ONION_CLIENT_AUTH_VIEW lists it).

    ``address`` is the service's 56-character address without ``.onion``;
    ``private_key`` the 32-byte x25519 key; ``permanent`` keys live in a
    ``ClientOnionAuthDir`` file (keys read from there are permanent too)."""

    address: str
    private_key: bytes
    client_name: str | None = None
    permanent: bool = False

    def __repr__(self) -> str:  # never the key, even in a traceback
        return (
            f"OnionClientAuth(address={self.address!r}, client_name={self.client_name!r}, "
            f"permanent={self.permanent})"
        )


def format_auth_private(address: str, private_key: bytes) -> str:
    """The text C tor writes for a permanent key (store_permanent_client_auth_credentials):
    ``<address>:descriptor:x25519:<lower-case base32 key>``, no newline."""
    if len(private_key) != 32:
        raise ValueError("an x25519 private key is 32 bytes")
    key = base64.b32encode(private_key).decode("ascii").rstrip("=").lower()
    return f"{address}:descriptor:x25519:{key}"


def parse_authorized_client(text: str, *, source: str = "<string>") -> bytes:
    """One ``authorized_clients/*.auth`` file of a service (``descriptor:x25519:<base32
    public key>``, C tor's format) → the client's x25519 public key."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ConfigError(f"{source}: expected one line, found {len(lines)}")
    fields = lines[0].split(":")
    if len(fields) != 3 or fields[0] != "descriptor" or fields[1] != "x25519":
        raise ConfigError(f"{source}: expected descriptor:x25519:<base32 public key>")
    key_b32 = fields[2].strip()
    if len(key_b32) != _KEY_B32_LEN:
        raise ConfigError(
            f"{source}: public key is {len(key_b32)} base32 characters, expected {_KEY_B32_LEN}"
        )
    try:
        key = base64.b32decode(key_b32.upper() + "====")
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source}: public key is not base32") from None
    if len(key) != 32:
        raise ConfigError(f"{source}: public key does not decode to 32 bytes")
    return key


def parse_auth_private(text: str, *, source: str = "<string>") -> tuple[bytes, bytes]:
    """One ``.auth_private`` file → (service identity key ``A``, x25519 private key)."""
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) != 1:
        raise ConfigError(f"{source}: expected one credential line, found {len(lines)}")
    fields = [f.strip() for f in lines[0].split(":")]
    if len(fields) != 4:
        raise ConfigError(
            f"{source}: expected <onion-address>:descriptor:x25519:<base32 key>, "
            f"found {len(fields)} ':'-separated fields"
        )
    address, auth_type, key_type, key_b32 = fields
    # Messages never echo a field that could be the private key (fields in the wrong
    # order): the error may end up in a log.
    if auth_type != "descriptor":
        raise ConfigError(
            f"{source}: unsupported auth type {_shown(auth_type)} (only 'descriptor')"
        )
    if key_type != "x25519":
        raise ConfigError(f"{source}: unsupported key type {_shown(key_type)} (only 'x25519')")
    try:
        identity = parse_onion_address(address)
    except OnionError as e:
        reason = str(e).replace(address, "<first field>") if address else str(e)
        raise ConfigError(f"{source}: {reason}") from None
    if len(key_b32) != _KEY_B32_LEN:
        raise ConfigError(
            f"{source}: private key is {len(key_b32)} base32 characters, expected {_KEY_B32_LEN}"
        )
    try:
        key = base64.b32decode(key_b32 + "====", casefold=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source}: private key is not base32") from None
    if len(key) != 32:
        raise ConfigError(f"{source}: private key does not decode to 32 bytes")
    if not any(key):
        raise ConfigError(f"{source}: private key is all zeros")
    return identity, key


def _shown(value: str) -> str:
    """A field for an error message: short names as they are, anything else by length."""
    return repr(value) if len(value) <= 12 else f"({len(value)} characters, not shown)"


def load_client_auth_dir(path: str | Path) -> dict[bytes, bytes]:
    """Read every ``*.auth_private`` file under ``path``: {identity key A: private key}.

    Raises ConfigError (naming the file) for an unreadable or malformed file,
    or for two files for the same service (C tor refuses that too).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"ClientOnionAuthDir {directory} is not a directory")
    keys: dict[bytes, bytes] = {}
    origin: dict[bytes, Path] = {}
    for file in sorted(directory.iterdir()):
        if not file.name.endswith(AUTH_PRIVATE_SUFFIX) or file.name == AUTH_PRIVATE_SUFFIX:
            continue
        if not file.is_file():
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file}: cannot read client auth file: {e}") from None
        identity, key = parse_auth_private(text, source=str(file))
        if identity in keys:
            raise ConfigError(
                f"{file}: duplicate client authorization (also in {origin[identity]})"
            )
        keys[identity], origin[identity] = key, file
    return keys
