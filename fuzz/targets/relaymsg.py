"""Relay-message body decoders (`puretor.proto.relaymsg.decode_*`, and INTRODUCE_ACK).

Input: ``selector(1) body...``; the selector picks the decoder.  Only
``RemoteProtocolError`` may escape.  Checked besides: link specifiers re-encode
to exactly the bytes consumed; decoded addresses are real addresses.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable

from fuzz.harness import Target, check
from puretor.errors import RemoteProtocolError
from puretor.hs.ntor import parse_introduce_ack
from puretor.proto import relaymsg as rm


def _connected(b: bytes) -> None:
    c = rm.decode_connected(b)
    if c.address is not None:
        ipaddress.ip_address(c.address)


def _end(b: bytes) -> None:
    end = rm.decode_end(b)
    rm.EndReason.describe(end.reason)
    if end.address is not None:
        ipaddress.ip_address(end.address)


def _resolved(b: bytes) -> None:
    for answer in rm.decode_resolved(b):
        if answer.type in (rm.RESOLVED_IPV4, rm.RESOLVED_IPV6):
            ipaddress.ip_address(answer.value)  # type: ignore[arg-type]


def _link_specifiers(b: bytes) -> None:
    specs, used = rm.decode_link_specifiers(b)
    check(rm.encode_link_specifiers(specs) == b[:used], "link specifiers do not round-trip")


def _extended2(b: bytes) -> None:
    rm.decode_extended2(b)


def _sendme(b: bytes) -> None:
    version, digest = rm.decode_sendme(b)
    check(version != 1 or (digest is not None and len(digest) == 20), "SENDME v1 digest")


def _truncated(b: bytes) -> None:
    rm.decode_truncated(b)


def _introduce_ack(b: bytes) -> None:
    check(0 <= parse_introduce_ack(b) <= 0xFFFF, "INTRODUCE_ACK status")


DECODERS: list[Callable[[bytes], None]] = [
    _connected,
    _end,
    _resolved,
    _link_specifiers,
    _extended2,
    _sendme,
    _truncated,
    _introduce_ack,
]


def one_input(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(RemoteProtocolError):
        DECODERS[data[0] % len(DECODERS)](data[1:])


def seeds() -> list[bytes]:
    v6 = ipaddress.IPv6Address("2001:db8::5").packed
    bodies = [
        bytes((192, 0, 2, 1, 0, 0, 0, 60)),  # CONNECTED IPv4 + TTL
        bytes(4) + b"\x06" + v6 + b"\x00\x00\x0e\x10",  # CONNECTED IPv6
        bytes((4, 10, 0, 0, 1, 0, 0, 1, 0)),  # END EXITPOLICY + address + TTL
        b"\x04\x04\x7f\x00\x00\x01\x00\x00\x00\x3c" + b"\x00\x07example\x00\x00\x00\x01",
        rm.encode_link_specifiers(
            [rm.ls_ipv4("192.0.2.9", 9001), rm.ls_rsa_id(bytes(20)), rm.ls_ed_id(bytes(32))]
        )
        + b"\x00\x02\x00\x54",
        b"\x00\x40" + bytes(64),  # EXTENDED2
        rm.encode_sendme_v1(bytes(range(20))),
        b"\x09",  # TRUNCATED FINISHED
        b"\x00\x00\x01\x01\x02ab",  # INTRODUCE_ACK with one extension
    ]
    selectors = [0, 0, 1, 2, 3, 4, 5, 6, 7]
    return [bytes((s,)) + b for s, b in zip(selectors, bodies, strict=True)]


TARGET = Target(name="relaymsg", one_input=one_input, seeds=seeds, max_len=1024, doc=__doc__ or "")
