"""DNS query parser of the DNSPort (`puretor.proto.dnsmsg`).

Input: one UDP datagram.  ``parse_query`` must return a query or raise
`DnsFormatError`, nothing else.  Checked besides: parsed names are at most 255
characters, a response can be built for every parsed question (NOERROR and each
error code) and is a well-formed message our own parser reads back as a response
(QR set), and ``format_error`` never raises.
"""

from __future__ import annotations

import struct

from fuzz.harness import Target, check
from puretor.proto.dnsmsg import DnsFormatError, Rcode, build_response, format_error, parse_query


def one_input(data: bytes) -> None:
    try:
        query = parse_query(data)
    except DnsFormatError:
        reply = format_error(data)
        check(reply is None or len(reply) == 12, "FORMERR reply is not a bare header")
        return
    for q in query.questions:
        check(len(q.name) <= 255, f"name of {len(q.name)} characters")
        for rcode in (Rcode.NOERROR, Rcode.NXDOMAIN, Rcode.NOTIMP):
            reply = build_response(query, rcode=rcode, question=q)
            flags = struct.unpack_from("!H", reply, 2)[0]
            check(bool(flags & 0x8000) and flags & 0xF == rcode, "bad response header")


def _q(name: bytes, qtype: int, flags: int = 0x0120, extra: bytes = b"", qd: int = 1) -> bytes:
    ar = 1 if extra else 0
    return (
        struct.pack("!HHHHHH", 0xBEEF, flags, qd, 0, 0, ar)
        + name
        + struct.pack("!HH", qtype, 1)
        + extra
    )


def seeds() -> list[bytes]:
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    target = b"\x06target\x04test\x00"
    return [
        _q(target, 1, extra=opt),
        _q(target, 28),
        _q(target, 15),
        _q(b"\x0210\x010\x0218\x03198\x07in-addr\x04arpa\x00", 12),
        _q(b"\x38" + b"a" * 56 + b"\x05onion\x00", 1),
        _q(b"\xc0\x0c", 1),
        _q(target, 1, flags=0x8180),
        _q(target, 1, qd=3),
        _q(b"\x01a\xc0\x0c", 1),
    ]


TARGET = Target(
    name="dns",
    one_input=one_input,
    seeds=seeds,
    max_len=1024,
    doc=__doc__ or "",
)
