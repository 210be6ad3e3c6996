"""Relay message bodies: commands and codecs for the data part of a relay cell.

tor-spec §6 (streams: BEGIN, CONNECTED, END, RESOLVE/RESOLVED), §5.1.2 (EXTEND2 and
link specifiers), §7.3.1 (SENDME), §5.4 (TRUNCATED). Each function works on the
relay *data* (the ``Length`` bytes after the 11-byte relay header), not on the
whole 509-byte body. Decoders raise :class:`~puretor.errors.RemoteProtocolError`
on malformed input and are otherwise lenient where C tor is.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from puretor.errors import RemoteProtocolError

__all__ = [
    "RELAY_BODY_LEN",
    "RELAY_DATA_LEN",
    "RELAY_HEADER_LEN",
    "Connected",
    "End",
    "EndReason",
    "LinkSpecifier",
    "RelayCommand",
    "ResolvedAnswer",
    "decode_connected",
    "decode_end",
    "decode_extended2",
    "decode_link_specifiers",
    "decode_resolved",
    "decode_sendme",
    "decode_truncated",
    "describe",
    "encode_begin",
    "encode_begin_dir",
    "encode_end",
    "encode_extend2",
    "encode_link_specifiers",
    "encode_resolve",
    "encode_sendme_v1",
    "ls_ed_id",
    "ls_ipv4",
    "ls_ipv6",
    "ls_rsa_id",
]

RELAY_BODY_LEN = 509
RELAY_HEADER_LEN = 11  # command(1) recognized(2) stream_id(2) digest(4) length(2)
RELAY_DATA_LEN = RELAY_BODY_LEN - RELAY_HEADER_LEN  # 498


class RelayCommand(enum.IntEnum):
    """Relay commands (tor-spec §6.1, rend-spec §0.5, prop 324, prop 329)."""

    BEGIN = 1
    DATA = 2
    END = 3
    CONNECTED = 4
    SENDME = 5
    EXTEND = 6
    EXTENDED = 7
    TRUNCATE = 8
    TRUNCATED = 9
    DROP = 10
    RESOLVE = 11
    RESOLVED = 12
    BEGIN_DIR = 13
    EXTEND2 = 14
    EXTENDED2 = 15
    # Conflux (proposal 329).
    CONFLUX_LINK = 19
    CONFLUX_LINKED = 20
    CONFLUX_LINKED_ACK = 21
    CONFLUX_SWITCH = 22
    ESTABLISH_INTRO = 32
    ESTABLISH_RENDEZVOUS = 33
    INTRODUCE1 = 34
    INTRODUCE2 = 35
    RENDEZVOUS1 = 36
    RENDEZVOUS2 = 37
    INTRO_ESTABLISHED = 38
    RENDEZVOUS_ESTABLISHED = 39
    INTRODUCE_ACK = 40
    PADDING_NEGOTIATE = 41
    PADDING_NEGOTIATED = 42
    # [C-TOR] 43 is XOFF and 44 XON (or.h; arti agrees): the 2023 tor-spec.txt table
    # has them the other way round.
    XOFF = 43
    XON = 44


class EndReason(enum.IntEnum):
    """RELAY_END reasons (tor-spec §6.3). Unknown values MUST be accepted."""

    MISC = 1
    RESOLVEFAILED = 2
    CONNECTREFUSED = 3
    EXITPOLICY = 4
    DESTROY = 5
    DONE = 6
    TIMEOUT = 7
    NOROUTE = 8
    HIBERNATING = 9
    INTERNAL = 10
    RESOURCELIMIT = 11
    CONNRESET = 12
    TORPROTOCOL = 13
    NOTDIRECTORY = 14

    @classmethod
    def describe(cls, reason: int) -> str:
        """A readable name, also for reasons newer than this list."""
        try:
            return cls(reason).name
        except ValueError:
            return f"UNKNOWN({reason})"


describe = EndReason.describe

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HTYPE_HLEN = struct.Struct("!HH")
_SENDME_V1_PREFIX = b"\x01\x00\x14"  # VERSION=1, DATA_LEN=20 (tor-spec §7.3.1)
_SENDME_HDR = struct.Struct("!BH")
_TTL_NONE = 0xFFFFFFFF  # "absent TTL" in RELAY_END (tor-spec §6.3)


def _ip_str(raw: bytes) -> str:
    return str(ipaddress.ip_address(bytes(raw)))


# -- streams (tor-spec §6.2, §6.2.1, §6.3) ---------------------------------------------


def encode_begin(host: str, port: int, flags: int = 0) -> bytes:
    """RELAY_BEGIN data: ``host:port\\0`` then FLAGS(4) only when non-zero, as C tor.

    The host is sent lower-case (anti-fingerprinting) and IPv6 literals in brackets.
    An empty host is what onion-service clients send (rend-spec §4.2: ``":port"``).
    """
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        host = f"[{ipaddress.IPv6Address(host)}]"  # ValueError if not IPv6
    if not host.isascii() or "\0" in host:
        raise ValueError(f"unusable host name: {host!r}")
    body = f"{host}:{port}".encode("ascii") + b"\0"
    return body + _U32.pack(flags) if flags else body


def decode_begin(body: bytes) -> tuple[str, int, int]:
    """RELAY_BEGIN data from the far end: ``(host, port, flags)``; ValueError if malformed.

    An onion-service client sends an empty host (``":80\\0"``).
    """
    nul = body.find(b"\0")
    if nul < 0:
        raise ValueError("BEGIN address is not NUL-terminated")
    try:
        text = bytes(body[:nul]).decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("BEGIN address is not ASCII") from None
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"BEGIN address {text[:64]!r} has no valid port")
    flags = _U32.unpack_from(body, nul + 1)[0] if len(body) >= nul + 5 else 0
    return host.strip("[]"), int(port_text), flags


def encode_begin_dir() -> bytes:
    """RELAY_BEGIN_DIR data is empty (tor-spec §6.2.1: an all-zero payload)."""
    return b""


@dataclass
class Connected:
    address: str | None
    ttl: int | None


def decode_connected(body: bytes) -> Connected:
    """CONNECTED: empty, ``IPv4 TTL``, or ``0.0.0.0 06 IPv6 TTL`` (tor-spec §6.2).

    Lenient, like C tor: anything else yields no address instead of an error
    (BEGIN_DIR and onion-service replies carry nothing useful).
    """
    n = len(body)
    if n < 4:
        return Connected(None, None)
    ipv4 = bytes(body[:4])
    if ipv4 != b"\0\0\0\0":
        ttl = _U32.unpack_from(body, 4)[0] if n >= 8 else None
        return Connected(_ip_str(ipv4), ttl)
    if n >= 21 and body[4] == 6:
        ttl = _U32.unpack_from(body, 21)[0] if n >= 25 else None
        return Connected(_ip_str(body[5:21]), ttl)
    return Connected(None, None)


def encode_end(reason: int) -> bytes:
    """RELAY_END data; a client SHOULD send MISC for its own streams (tor-spec §6.3)."""
    return bytes((reason,))


@dataclass
class End:
    reason: int
    address: str | None
    ttl: int | None


def decode_end(body: bytes) -> End:
    """RELAY_END: reason, plus address and TTL for EXITPOLICY (tor-spec §6.3).

    Empty means MISC. The EXITPOLICY extras are read by length as C tor does
    (relay.c: 4 or 16 address bytes, optionally followed by a TTL); a missing TTL
    reads as 0xFFFFFFFF, a malformed address is ignored.
    """
    if not body:
        return End(EndReason.MISC, None, None)
    reason = body[0]
    extra = len(body) - 1
    if reason == EndReason.EXITPOLICY and extra in (4, 8, 16, 20):
        alen = 4 if extra in (4, 8) else 16
        addr = _ip_str(body[1 : 1 + alen])
        ttl = _U32.unpack_from(body, 1 + alen)[0] if extra > alen else _TTL_NONE
        return End(reason, addr, ttl)
    return End(reason, None, None)


# -- RESOLVE / RESOLVED (tor-spec §6.4) --------------------------------------------------

RESOLVED_HOSTNAME = 0x00
RESOLVED_IPV4 = 0x04
RESOLVED_IPV6 = 0x06
RESOLVED_ERROR_TRANSIENT = 0xF0
RESOLVED_ERROR_NONTRANSIENT = 0xF1


def encode_resolve(hostname: str) -> bytes:
    """RELAY_RESOLVE data: the name (or ``d.c.b.a.in-addr.arpa``) and a NUL."""
    if not hostname or not hostname.isascii() or "\0" in hostname:
        raise ValueError(f"unusable host name: {hostname!r}")
    return hostname.encode("ascii") + b"\0"


@dataclass
class ResolvedAnswer:
    type: int
    value: bytes | str  # str for hostname/IPv4/IPv6; raw bytes for errors and unknown types
    ttl: int


def decode_resolved(body: bytes) -> list[ResolvedAnswer]:
    """All answers of a RELAY_RESOLVED: ``TYPE(1) LEN(1) VALUE TTL(4)`` repeated."""
    answers: list[ResolvedAnswer] = []
    pos, n = 0, len(body)
    while pos < n:
        if pos + 2 > n:
            raise RemoteProtocolError("RESOLVED truncated in an answer header")
        atype, alen = body[pos], body[pos + 1]
        vend = pos + 2 + alen
        if vend + 4 > n:
            raise RemoteProtocolError("RESOLVED truncated in an answer")
        raw = bytes(body[pos + 2 : vend])
        (ttl,) = _U32.unpack_from(body, vend)
        pos = vend + 4
        value: bytes | str
        if atype in (RESOLVED_IPV4, RESOLVED_IPV6):
            if alen != (4 if atype == RESOLVED_IPV4 else 16):
                raise RemoteProtocolError(f"RESOLVED address of type {atype} has length {alen}")
            value = _ip_str(raw)
        elif atype == RESOLVED_HOSTNAME:
            value = raw.decode("ascii", "replace")
        else:
            value = raw  # errors: contents MUST be ignored; unknown types: kept raw
        answers.append(ResolvedAnswer(atype, value, ttl))
    return answers


# -- link specifiers and EXTEND2 (tor-spec §5.1.2) ---------------------------------------

LS_IPV4 = 0x00
LS_IPV6 = 0x01
LS_LEGACY_ID = 0x02
LS_ED25519_ID = 0x03


@dataclass(frozen=True)
class LinkSpecifier:
    """One ``LSTYPE LSLEN LSPEC``; unknown types are carried opaquely (onion services)."""

    type: int
    data: bytes


def ls_ipv4(addr: str, port: int) -> LinkSpecifier:
    return LinkSpecifier(LS_IPV4, ipaddress.IPv4Address(addr).packed + _U16.pack(port))


def ls_ipv6(addr: str, port: int) -> LinkSpecifier:
    return LinkSpecifier(LS_IPV6, ipaddress.IPv6Address(addr).packed + _U16.pack(port))


def ls_rsa_id(id20: bytes) -> LinkSpecifier:
    if len(id20) != 20:
        raise ValueError("RSA identity digest must be 20 bytes")
    return LinkSpecifier(LS_LEGACY_ID, bytes(id20))


def ls_ed_id(id32: bytes) -> LinkSpecifier:
    if len(id32) != 32:
        raise ValueError("Ed25519 identity must be 32 bytes")
    return LinkSpecifier(LS_ED25519_ID, bytes(id32))


def encode_link_specifiers(specs: Iterable[LinkSpecifier]) -> bytes:
    """``NSPEC(1)`` then each ``LSTYPE(1) LSLEN(1) LSPEC``, in the given order."""
    parts = []
    for s in specs:
        if len(s.data) > 255:
            raise ValueError("link specifier too long")
        parts.append(bytes((s.type, len(s.data))) + s.data)
    if len(parts) > 255:
        raise ValueError("too many link specifiers")
    return bytes((len(parts),)) + b"".join(parts)


def decode_link_specifiers(buf: bytes) -> tuple[list[LinkSpecifier], int]:
    """Parse ``NSPEC`` + specifiers at the start of ``buf``; returns (specs, bytes consumed)."""
    if not buf:
        raise RemoteProtocolError("link specifier list is empty")
    count, pos = buf[0], 1
    specs: list[LinkSpecifier] = []
    for _ in range(count):
        if pos + 2 > len(buf):
            raise RemoteProtocolError("link specifier list truncated")
        lstype, lslen = buf[pos], buf[pos + 1]
        end = pos + 2 + lslen
        if end > len(buf):
            raise RemoteProtocolError(f"link specifier of type {lstype} truncated")
        specs.append(LinkSpecifier(lstype, bytes(buf[pos + 2 : end])))
        pos = end
    return specs, pos


def encode_extend2(specs: Sequence[LinkSpecifier], htype: int, hdata: bytes) -> bytes:
    """EXTEND2 data: link specifiers, then ``HTYPE(2) HLEN(2) HDATA``.

    The caller picks the order; C tor sends IPv4, legacy id, Ed25519 id, IPv6
    (spec-map §2.5) and relays refuse an EXTEND2 without a legacy id.
    """
    body = encode_link_specifiers(specs) + _HTYPE_HLEN.pack(htype, len(hdata)) + hdata
    if len(body) > RELAY_DATA_LEN:
        raise ValueError(f"EXTEND2 body too long ({len(body)} > {RELAY_DATA_LEN})")
    return body


def decode_extended2(body: bytes) -> bytes:
    """HDATA of an EXTENDED2 (``HLEN(2) HDATA``, the CREATED2 format)."""
    if len(body) < 2:
        raise RemoteProtocolError("EXTENDED2 too short for HLEN")
    (hlen,) = _U16.unpack_from(body)
    if 2 + hlen > len(body):
        raise RemoteProtocolError(f"EXTENDED2 HLEN {hlen} exceeds the body")
    return bytes(body[2 : 2 + hlen])


# -- SENDME (tor-spec §7.3.1, prop 289) ------------------------------------------------


def encode_sendme_v1(digest20: bytes) -> bytes:
    """Authenticated circuit SENDME: ``01 0014 <20-byte digest>``."""
    if len(digest20) != 20:
        raise ValueError("SENDME v1 digest must be 20 bytes")
    return _SENDME_V1_PREFIX + digest20


def decode_sendme(body: bytes) -> tuple[int, bytes | None]:
    """``(version, digest)``. Empty (stream SENDME or legacy v0) is ``(0, None)``.

    For v1 the digest is the first 20 bytes of DATA; for unknown versions the raw
    DATA is returned so the caller can reject it rather than treat it as v0.
    """
    n = len(body)
    if n == 0:
        return 0, None
    if n < 3:
        raise RemoteProtocolError("SENDME truncated in its header")
    version, dlen = _SENDME_HDR.unpack_from(body)
    if 3 + dlen > n:
        raise RemoteProtocolError(f"SENDME DATA_LEN {dlen} exceeds the body")
    data = bytes(body[3 : 3 + dlen])
    if version == 0:
        return 0, None
    if version == 1:
        if dlen < 20:
            raise RemoteProtocolError(f"SENDME v1 digest too short ({dlen} bytes)")
        return 1, data[:20]
    return version, data


# -- TRUNCATED (tor-spec §5.4) ---------------------------------------------------------


def decode_truncated(body: bytes) -> int:
    """The reason byte (a DESTROY reason); empty reads as NONE (0), as in C tor."""
    return body[0] if body else 0
