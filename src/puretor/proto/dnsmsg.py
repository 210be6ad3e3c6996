"""Sans-I/O DNS messages for the DNSPort: parse a query, build the answer (RFC 1035).

Only what a stub resolver sends a DNS server: the 12-byte header and the question
section.  Answer, authority and additional records of a query (an EDNS OPT record, as
dig sends) are not read.  Names may use compression pointers; loops, pointers forward
or outside the message, over-long names, labels with dots or control characters are
all `DnsFormatError`.  Answers carry one record (as C tor's dnsserv.c gives) and
never compress.

    query = parse_query(datagram)          # DnsFormatError: reply format_error(datagram)
    sock.sendto(build_response(query, rcode=..., answers=[...]), peer)
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "CLASS_IN",
    "DnsFormatError",
    "DnsQuery",
    "Question",
    "Rcode",
    "Rtype",
    "build_response",
    "format_error",
    "parse_query",
]

CLASS_IN = 1
MAX_NAME = 255  # RFC 1035 2.3.4, presentation form without the final dot: 253
MAX_QUESTIONS = 16  # more in one UDP query is no stub resolver: FORMERR
_HEADER = struct.Struct("!HHHHHH")


class Rtype:
    A = 1
    PTR = 12
    MX = 15
    AAAA = 28
    ANY = 255


class Rcode:
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class DnsFormatError(ValueError):
    """Not a DNS query we can read."""


@dataclass(frozen=True)
class Question:
    name: str  # presentation form, no final dot, case as sent
    qtype: int
    qclass: int


@dataclass
class DnsQuery:
    id: int
    flags: int  # the header's flags word as sent
    questions: list[Question] = field(default_factory=list)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def recursion_desired(self) -> bool:
        return bool(self.flags & 0x0100)


def _read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) name at ``offset`` -> (name, offset after it)."""
    labels: list[str] = []
    length = 0
    end: int | None = None
    seen: set[int] = set()
    pos = offset
    while True:
        if pos >= len(msg):
            raise DnsFormatError("name runs past the message")
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise DnsFormatError("truncated compression pointer")
            target = ((n & 0x3F) << 8) | msg[pos + 1]
            if end is None:
                end = pos + 2
            if target in seen or target >= pos:
                raise DnsFormatError("compression pointer loops or points forward")
            seen.add(target)
            pos = target
            continue
        if n & 0xC0:
            raise DnsFormatError("reserved label type")
        if n == 0:
            return ".".join(labels), (pos + 1 if end is None else end)
        raw = msg[pos + 1 : pos + 1 + n]
        if len(raw) != n:
            raise DnsFormatError("label runs past the message")
        if any(b <= 0x20 or b >= 0x7F or b == 0x2E for b in raw):
            raise DnsFormatError("label with a dot, space or control character")
        length += n + 1
        if length > MAX_NAME:
            raise DnsFormatError("name longer than 255 octets")
        labels.append(raw.decode("ascii"))
        pos += 1 + n


def parse_query(msg: bytes) -> DnsQuery:
    """A query's header and questions; `DnsFormatError` for anything malformed.

    A message with QR set (a response, not a query) is a `DnsFormatError` too: a DNS
    server never answers answers (that would make reflection loops)."""
    if len(msg) < _HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(msg)
    if flags & 0x8000:
        raise DnsFormatError("a response, not a query")
    if qdcount > MAX_QUESTIONS:
        raise DnsFormatError("too many questions")
    query = DnsQuery(ident, flags)
    pos = _HEADER.size
    for _ in range(qdcount):
        name, pos = _read_name(msg, pos)
        if pos + 4 > len(msg):
            raise DnsFormatError("truncated question")
        qtype, qclass = struct.unpack_from("!HH", msg, pos)
        pos += 4
        query.questions.append(Question(name, qtype, qclass))
    return query


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes((len(raw),)) + raw
    if len(out) + 1 > MAX_NAME + 1:
        raise ValueError("name too long")
    return bytes(out) + b"\x00"


def _rdata(rtype: int, value: str) -> bytes:
    if rtype == Rtype.A:
        return ipaddress.IPv4Address(value).packed
    if rtype == Rtype.AAAA:
        return ipaddress.IPv6Address(value).packed
    if rtype == Rtype.PTR:
        return _encode_name(value)
    raise ValueError(f"cannot encode a type {rtype} record")


def _flags(query_flags: int, rcode: int) -> int:
    # QR, the query's opcode and RD, RA (C tor sets it), the rcode; AA, TC, Z clear.
    return 0x8000 | (query_flags & 0x7800) | (query_flags & 0x0100) | 0x0080 | (rcode & 0xF)


def build_response(
    query: DnsQuery,
    *,
    rcode: int = Rcode.NOERROR,
    question: Question | None = None,
    answers: Sequence[tuple[int, str, int]] = (),
) -> bytes:
    """The response to ``query``: ``question`` echoed (default: its first), and
    ``answers`` as (type, value, ttl) records owned by that question's name."""
    q = question if question is not None else (query.questions[0] if query.questions else None)
    body = bytearray()
    if q is not None:
        qname = _encode_name(q.name)
        body += qname + struct.pack("!HH", q.qtype, q.qclass)
        for rtype, value, ttl in answers:
            rdata = _rdata(rtype, value)
            body += qname + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata
    header = _HEADER.pack(
        query.id, _flags(query.flags, rcode), 1 if q else 0, len(answers) if q else 0, 0, 0
    )
    return header + bytes(body)


def format_error(msg: bytes) -> bytes | None:
    """FORMERR for an unreadable query (no question echoed), or None when not even the
    header is there or it is a response (those are dropped)."""
    if len(msg) < _HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", msg)
    if flags & 0x8000:
        return None
    return _HEADER.pack(ident, _flags(flags, Rcode.FORMERR), 0, 0, 0, 0)
