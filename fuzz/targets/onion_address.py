"""v3 onion addresses (`puretor.hs.address`).

Input: ``flags(1) host``; the host is decoded as latin-1 (flag bit 0) or as
UTF-8 with replacement characters, since applications hand us any ``str``.
Only ``OnionError`` may escape.  Checked besides: an address that parses
re-encodes to its own (lower-cased) label.
"""

from __future__ import annotations

import contextlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fuzz.harness import Target, check
from puretor.errors import OnionError
from puretor.hs.address import (
    encode_onion_address,
    is_onion_host,
    onion_label,
    parse_onion_address,
)


def one_input(data: bytes) -> None:
    if not data:
        return
    host = data[1:].decode("latin-1" if data[0] & 1 else "utf-8", "replace")
    is_onion_host(host)
    with contextlib.suppress(OnionError):
        onion_label(host)
    try:
        key = parse_onion_address(host)
    except OnionError:
        return
    check(len(key) == 32, "identity key length")
    name = host.rstrip(".").lower()
    label = name if "." not in name else name[: -len(".onion")].rsplit(".", 1)[-1]
    check(encode_onion_address(key) == label + ".onion", f"{host!r} does not round-trip")


def seeds() -> list[bytes]:
    keys = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2)]
    addrs = [encode_onion_address(k.public_key().public_bytes_raw()) for k in keys]
    a = addrs[0]
    hosts = [
        a,
        a.upper(),
        "www." + a,
        a + ".",
        a[:-6],  # the bare label
        addrs[1][:10] + a[10:],  # bad checksum
        "expyuzz4wqqyqhjn.onion",  # v2
        "example.com",
        ".onion",
        "x..onion",
    ]
    return [bytes((f,)) + h.encode() for h in hosts for f in (0, 1)]


TARGET = Target(
    name="onion_address",
    one_input=one_input,
    seeds=seeds,
    max_len=512,
    dictionary=(b".onion", b".", b"www."),
    doc=__doc__ or "",
)
