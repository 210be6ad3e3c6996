"""A tiny authoritative DNS responder for the exits (RFC 1035, UDP, stdlib only).

It answers A queries for a fixed name table, PTR queries for the table's addresses, NOERROR
with no answer for other types of a known name, NXDOMAIN for everything else. Tor randomizes the
case of query names (DNS 0x20), so names are matched case-insensitively and the question is
echoed byte for byte.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass

TYPE_A = 1
TYPE_PTR = 12
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4

_HEADER = struct.Struct("!HHHHHH")
_TTL = 60


class DnsFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    name: str  # as sent (case preserved), without the trailing dot
    qtype: int
    qclass: int
    raw: bytes  # the question section's exact bytes, echoed in the answer


@dataclass(frozen=True)
class Query:
    ident: int
    flags: int
    question: Question


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\0")


def _decode_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        if offset >= len(data):
            raise DnsFormatError("name runs past the packet")
        length = data[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        if length & 0xC0:
            # Queries never need compression; refusing it keeps the parser trivially safe.
            raise DnsFormatError("compressed name in question")
        labels.append(data[offset : offset + length].decode("ascii", "replace"))
        offset += length


def encode_query(ident: int, name: str, qtype: int = TYPE_A) -> bytes:
    """A standard recursive query (used by tests and health checks)."""
    return (
        _HEADER.pack(ident, 0x0100, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, CLASS_IN)
    )


def parse_query(data: bytes) -> Query:
    if len(data) < _HEADER.size:
        raise DnsFormatError("short header")
    ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(data)
    if flags & 0x8000:
        raise DnsFormatError("not a query")
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions")
    name, offset = _decode_name(data, _HEADER.size)
    if offset + 4 > len(data):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    raw = data[_HEADER.size : offset + 4]
    return Query(ident, flags, Question(name, qtype, qclass, raw))


def _ptr_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def _header(query: Query, rcode: int, ancount: int) -> bytes:
    # QR=1, keep opcode and RD, AA=1 (we are the authority), RA=1.
    flags = 0x8000 | (query.flags & 0x7900) | 0x0400 | 0x0080 | rcode
    return _HEADER.pack(query.ident, flags, 1, ancount, 0, 0)


def answer(query: Query, names: Mapping[str, str]) -> bytes:
    """The response to `query` given {hostname: IPv4}."""
    q = query.question
    if (query.flags >> 11) & 0xF != 0:
        return _header(query, RCODE_NOTIMP, 0) + q.raw
    wanted = q.name.lower().rstrip(".")
    table = {k.lower(): v for k, v in names.items()}
    reverse = {_ptr_name(ip): host for host, ip in names.items()}
    pointer = b"\xc0\x0c"  # the answer's name points at the question's (offset 12)
    if q.qclass == CLASS_IN and wanted in table:
        if q.qtype != TYPE_A:
            return _header(query, RCODE_NOERROR, 0) + q.raw
        rdata = socket.inet_aton(table[wanted])
        rr = pointer + struct.pack("!HHIH", TYPE_A, CLASS_IN, _TTL, len(rdata)) + rdata
        return _header(query, RCODE_NOERROR, 1) + q.raw + rr
    if q.qclass == CLASS_IN and q.qtype == TYPE_PTR and wanted in reverse:
        rdata = encode_name(reverse[wanted])
        rr = pointer + struct.pack("!HHIH", TYPE_PTR, CLASS_IN, _TTL, len(rdata)) + rdata
        return _header(query, RCODE_NOERROR, 1) + q.raw + rr
    return _header(query, RCODE_NXDOMAIN, 0) + q.raw


def respond(packet: bytes, names: Mapping[str, str]) -> bytes | None:
    """Bytes to send back for one datagram, or None to drop it."""
    try:
        return answer(parse_query(packet), names)
    except DnsFormatError:
        if len(packet) < _HEADER.size:
            return None
        ident, flags = struct.unpack_from("!HH", packet)
        if flags & 0x8000:
            return None  # never answer a response
        return _HEADER.pack(ident, 0x8000 | (flags & 0x7900) | RCODE_FORMERR, 0, 0, 0, 0)


def parse_response(data: bytes) -> tuple[int, int, list[str]]:
    """(ident, rcode, [A addresses]) - a minimal reader for tests."""
    ident, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(data)
    offset = _HEADER.size
    for _ in range(qdcount):
        _name, offset = _decode_name(data, offset)
        offset += 4
    addrs: list[str] = []
    for _ in range(ancount):
        if data[offset] & 0xC0 == 0xC0:
            offset += 2
        else:
            _name, offset = _decode_name(data, offset)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        if rtype == TYPE_A:
            addrs.append(socket.inet_ntoa(data[offset : offset + rdlen]))
        offset += rdlen
    return ident, flags & 0xF, addrs


class DnsServer:
    """Serves `names` on a UDP socket from a daemon thread."""

    def __init__(self, host: str, port: int, names: Mapping[str, str]) -> None:
        self.names = dict(names)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.address: tuple[str, int] = self.sock.getsockname()
        self._thread = threading.Thread(target=self._run, name="dns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # socket closed
            reply = respond(packet, self.names)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.sock.close()
