"""Channel cells: commands, framing and the payload codecs (tor-spec §3, §4, §5.1, §5.4).

Framing here is for link protocol ≥ 4 (4-byte CircID) except the initial VERSIONS
cell, which always uses a 2-byte CircID (tor-spec §4.1). Encoders return *payloads*
(unpadded); :func:`encode_cell` frames and zero-pads them. Decoders take a payload
and raise :class:`~puretor.errors.RemoteProtocolError` on malformed input, never
``IndexError``/``struct.error``.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from puretor.errors import RemoteProtocolError

__all__ = [
    "CELL_LEN",
    "PAYLOAD_LEN",
    "CellCommand",
    "DestroyReason",
    "Netinfo",
    "decode_auth_challenge",
    "decode_certs",
    "decode_created2",
    "decode_created_fast",
    "decode_destroy",
    "decode_netinfo",
    "decode_versions",
    "describe",
    "encode_cell",
    "encode_create2",
    "encode_create_fast",
    "encode_destroy",
    "encode_netinfo",
    "encode_padding_negotiate",
    "encode_versions_cell",
    "is_var_cell",
]

CELL_LEN = 514  # CircID(4) Command(1) Payload(509), link protocol ≥ 4
PAYLOAD_LEN = 509
VAR_PAYLOAD_MAX = 0xFFFF


class CellCommand(enum.IntEnum):
    """Cell commands (tor-spec §3)."""

    PADDING = 0
    CREATE = 1
    CREATED = 2
    RELAY = 3
    DESTROY = 4
    CREATE_FAST = 5
    CREATED_FAST = 6
    VERSIONS = 7
    NETINFO = 8
    RELAY_EARLY = 9
    CREATE2 = 10
    CREATED2 = 11
    PADDING_NEGOTIATE = 12
    VPADDING = 128
    CERTS = 129
    AUTH_CHALLENGE = 130
    AUTHENTICATE = 131
    AUTHORIZE = 132


class DestroyReason(enum.IntEnum):
    """DESTROY / RELAY_TRUNCATED reasons (tor-spec §5.4)."""

    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    REQUESTED = 3
    HIBERNATING = 4
    RESOURCELIMIT = 5
    CONNECTFAILED = 6
    OR_IDENTITY = 7
    CHANNEL_CLOSED = 8
    FINISHED = 9
    TIMEOUT = 10
    DESTROYED = 11
    NOSUCHSERVICE = 12

    @classmethod
    def describe(cls, reason: int) -> str:
        """A readable name, also for reasons newer than this list."""
        try:
            return cls(reason).name
        except ValueError:
            return f"UNKNOWN({reason})"


describe = DestroyReason.describe

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_FIXED_HDR = struct.Struct("!IB")  # CircID, Command
_VAR_HDR = struct.Struct("!IBH")  # CircID, Command, Length
_VERSIONS_HDR = struct.Struct("!HBH")  # 2-byte CircID framing for VERSIONS (tor-spec §4.1)
_HTYPE_HLEN = struct.Struct("!HH")
_PADDING_NEGOTIATE = struct.Struct("!BBHH")
_ZEROS = bytes(PAYLOAD_LEN)

_ATYPE_IPV4 = 0x04
_ATYPE_IPV6 = 0x06


def is_var_cell(cmd: int) -> bool:
    """Variable-length cell iff VERSIONS or command ≥ 128 (tor-spec §3)."""
    return cmd == 7 or cmd >= 128


# -- framing -------------------------------------------------------------------


def encode_versions_cell(versions: Iterable[int]) -> bytes:
    """A whole VERSIONS cell: CircID(2)=0, var-cell framing, u16 versions (tor-spec §4.1)."""
    body = b"".join(_U16.pack(v) for v in versions)
    return _VERSIONS_HDR.pack(0, CellCommand.VERSIONS, len(body)) + body


def decode_versions(payload: bytes) -> list[int]:
    """The versions listed in a VERSIONS payload.

    A trailing odd byte is ignored, as C tor does (channeltls.c walks pairs).
    """
    n = len(payload) // 2
    return list(struct.unpack_from(f"!{n}H", payload)) if n else []


def encode_cell(circ_id: int, cmd: int, payload: bytes) -> bytes:
    """Frame one cell for link protocol ≥ 4 (tor-spec §3).

    Fixed-length cells are zero-padded to 509 bytes; variable-length cells carry a
    2-byte length.
    """
    n = len(payload)
    if is_var_cell(cmd):
        if n > VAR_PAYLOAD_MAX:
            raise ValueError(f"variable cell payload too long ({n} bytes)")
        return _VAR_HDR.pack(circ_id, cmd, n) + payload
    if n > PAYLOAD_LEN:
        raise ValueError(f"fixed cell payload too long ({n} > {PAYLOAD_LEN})")
    return _FIXED_HDR.pack(circ_id, cmd) + payload + _ZEROS[n:]


# -- NETINFO (tor-spec §4.5) ------------------------------------------------------


@dataclass(frozen=True)
class Netinfo:
    timestamp: int
    other_address: str | None  # None: absent, unknown type, bad length, or unspecified
    my_addresses: tuple[str, ...]


def _encode_address(addr: str) -> bytes:
    ip = ipaddress.ip_address(addr)
    atype = _ATYPE_IPV4 if ip.version == 4 else _ATYPE_IPV6
    packed = ip.packed
    return bytes((atype, len(packed))) + packed


def encode_netinfo(
    other_address: str, my_addresses: Iterable[str] = (), timestamp: int = 0
) -> bytes:
    """NETINFO payload. Clients send TIME=0 and no addresses of their own (tor-spec §4.5)."""
    mine = [_encode_address(a) for a in my_addresses]
    if len(mine) > 255:
        raise ValueError("too many addresses for NETINFO")
    return b"".join(
        [_U32.pack(timestamp), _encode_address(other_address), bytes((len(mine),)), *mine]
    )


def _read_address(payload: bytes, pos: int) -> tuple[str | None, int]:
    """One ATYPE ALEN AVAL triple; returns (address or None if unusable, new position)."""
    if pos + 2 > len(payload):
        raise RemoteProtocolError("NETINFO truncated in an address header")
    atype, alen = payload[pos], payload[pos + 1]
    end = pos + 2 + alen
    if end > len(payload):
        raise RemoteProtocolError("NETINFO truncated in an address value")
    raw = bytes(payload[pos + 2 : end])
    # Wrong ALEN for the ATYPE, or an unknown ATYPE: ignore the address (tor-spec §4.5).
    if atype == _ATYPE_IPV4 and alen == 4:
        return str(ipaddress.IPv4Address(raw)), end
    if atype == _ATYPE_IPV6 and alen == 16:
        return str(ipaddress.IPv6Address(raw)), end
    return None, end


def decode_netinfo(payload: bytes) -> Netinfo:
    """Parse a NETINFO payload; trailing bytes (the zero padding) are ignored."""
    if len(payload) < 4:
        raise RemoteProtocolError("NETINFO too short for its timestamp")
    (timestamp,) = _U32.unpack_from(payload)
    other, pos = _read_address(payload, 4)
    # An all-zero OTHERADDR means "I don't know" (as Arti reads it).
    if other is not None and ipaddress.ip_address(other).is_unspecified:
        other = None
    if pos >= len(payload):
        raise RemoteProtocolError("NETINFO truncated before NMYADDR")
    count = payload[pos]
    pos += 1
    mine: list[str] = []
    for _ in range(count):
        addr, pos = _read_address(payload, pos)
        if addr is not None:
            mine.append(addr)
    return Netinfo(timestamp, other, tuple(mine))


# -- CERTS and AUTH_CHALLENGE (tor-spec §4.2, §4.3) -----------------------------------


def decode_certs(payload: bytes) -> list[tuple[int, bytes]]:
    """``[(CertType, body), ...]`` in cell order; extra trailing bytes are ignored."""
    if not payload:
        raise RemoteProtocolError("CERTS cell is empty")
    count = payload[0]
    pos = 1
    certs: list[tuple[int, bytes]] = []
    for i in range(count):
        if pos + 3 > len(payload):
            raise RemoteProtocolError(f"CERTS truncated in the header of cert {i + 1} of {count}")
        ctype = payload[pos]
        (clen,) = _U16.unpack_from(payload, pos + 1)
        start = pos + 3
        pos = start + clen
        if pos > len(payload):
            raise RemoteProtocolError(f"CERTS truncated in the body of cert {i + 1} (type {ctype})")
        certs.append((ctype, bytes(payload[start:pos])))
    return certs


def decode_auth_challenge(payload: bytes) -> tuple[bytes, list[int]]:
    """``(challenge32, methods)``; trailing bytes are ignored (tor-spec §4.3)."""
    if len(payload) < 34:
        raise RemoteProtocolError("AUTH_CHALLENGE too short")
    (n,) = _U16.unpack_from(payload, 32)
    if 34 + 2 * n > len(payload):
        raise RemoteProtocolError("AUTH_CHALLENGE truncated in its method list")
    return bytes(payload[:32]), list(struct.unpack_from(f"!{n}H", payload, 34))


# -- circuit creation and teardown (tor-spec §5.1, §5.1.5, §5.4) ----------------------


def encode_create2(htype: int, hdata: bytes) -> bytes:
    """CREATE2 payload: HTYPE(2) HLEN(2) HDATA."""
    if 4 + len(hdata) > PAYLOAD_LEN:
        raise ValueError(f"CREATE2 handshake too long ({len(hdata)} bytes)")
    return _HTYPE_HLEN.pack(htype, len(hdata)) + hdata


def decode_created2(payload: bytes) -> bytes:
    """HDATA of a CREATED2 payload (HLEN(2) HDATA); EXTENDED2 bodies share the format."""
    if len(payload) < 2:
        raise RemoteProtocolError("CREATED2 too short for HLEN")
    (hlen,) = _U16.unpack_from(payload)
    if 2 + hlen > len(payload):
        raise RemoteProtocolError(f"CREATED2 HLEN {hlen} exceeds the payload")
    return bytes(payload[2 : 2 + hlen])


def encode_create_fast(x: bytes) -> bytes:
    """CREATE_FAST payload: X (20 random bytes)."""
    if len(x) != 20:
        raise ValueError("CREATE_FAST key material must be 20 bytes")
    return bytes(x)


def decode_created_fast(payload: bytes) -> tuple[bytes, bytes]:
    """``(Y, KH)`` from a CREATED_FAST payload."""
    if len(payload) < 40:
        raise RemoteProtocolError("CREATED_FAST too short")
    return bytes(payload[:20]), bytes(payload[20:40])


def encode_destroy(reason: int) -> bytes:
    """DESTROY payload; a client always sends NONE (tor-spec §5.4)."""
    return bytes((reason,))


def decode_destroy(payload: bytes) -> int:
    """The reason byte. An empty payload (impossible for a real fixed cell) reads as NONE."""
    return payload[0] if payload else DestroyReason.NONE


# -- PADDING_NEGOTIATE (padding-spec §2.2) ---------------------------------------------

PADDING_NEGOTIATE_STOP = 1
PADDING_NEGOTIATE_START = 2


def encode_padding_negotiate(command: int, ito_low_ms: int = 0, ito_high_ms: int = 0) -> bytes:
    """PADDING_NEGOTIATE payload: version 0, command (1 stop / 2 start), timeouts in ms."""
    return _PADDING_NEGOTIATE.pack(0, command, ito_low_ms, ito_high_ms)
