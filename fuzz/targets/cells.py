"""Channel-cell payload decoders (`puretor.proto.cells.decode_*`).

Input: ``selector(1) payload...``; the selector picks the decoder.  Only
``RemoteProtocolError`` may escape.  Checked besides: what a decoder returns is
consistent with the bytes it read (CERTS bodies re-encode to a prefix of the
payload, a NETINFO's addresses are real addresses).
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from collections.abc import Callable

from fuzz.harness import Target, check
from puretor.errors import RemoteProtocolError
from puretor.proto import cells


def _versions(p: bytes) -> None:
    versions = cells.decode_versions(p)
    check(len(versions) == len(p) // 2, "VERSIONS count")


def _netinfo(p: bytes) -> None:
    info = cells.decode_netinfo(p)
    for addr in (info.other_address, *info.my_addresses):
        if addr is not None:
            ipaddress.ip_address(addr)


def _certs(p: bytes) -> None:
    found = cells.decode_certs(p)
    encoded = bytes((len(found),)) + b"".join(
        struct.pack("!BH", t, len(body)) + body for t, body in found
    )
    check(p.startswith(encoded), "CERTS bodies do not re-encode to the payload")


def _auth_challenge(p: bytes) -> None:
    challenge, methods = cells.decode_auth_challenge(p)
    check(len(challenge) == 32 and all(0 <= m <= 0xFFFF for m in methods), "AUTH_CHALLENGE")


def _created2(p: bytes) -> None:
    check(len(cells.decode_created2(p)) <= len(p) - 2, "CREATED2 HDATA longer than the payload")


def _created_fast(p: bytes) -> None:
    y, kh = cells.decode_created_fast(p)
    check(len(y) == len(kh) == 20, "CREATED_FAST lengths")


def _destroy(p: bytes) -> None:
    cells.DestroyReason.describe(cells.decode_destroy(p))


DECODERS: list[Callable[[bytes], None]] = [
    _versions,
    _netinfo,
    _certs,
    _auth_challenge,
    _created2,
    _created_fast,
    _destroy,
]


def one_input(data: bytes) -> None:
    if not data:
        return
    decoder = DECODERS[data[0] % len(DECODERS)]
    with contextlib.suppress(RemoteProtocolError):
        decoder(data[1:])


def seeds() -> list[bytes]:
    payloads = [
        b"\x00\x03\x00\x04\x00\x05",  # VERSIONS
        cells.encode_netinfo("192.0.2.7", ["198.51.100.1", "2001:db8::2"], 1_700_000_000),
        bytes([2, 1, 0, 3]) + b"abc" + bytes([7, 0, 2]) + b"xy",  # CERTS
        bytes(range(32)) + b"\x00\x02\x00\x01\x00\x03",  # AUTH_CHALLENGE
        b"\x00\x40" + bytes(64),  # CREATED2
        bytes(range(40)),  # CREATED_FAST
        bytes([cells.DestroyReason.FINISHED]),
    ]
    return [bytes((i,)) + p for i, p in enumerate(payloads)]


TARGET = Target(name="cells", one_input=one_input, seeds=seeds, max_len=1024, doc=__doc__ or "")
