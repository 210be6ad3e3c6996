"""Sans-I/O SOCKS4/4a/5 server handshake: bytes in, reply bytes and one request out.

References: RFC 1928 (SOCKS5), RFC 1929 (username/password), torspec
``socks-extensions.txt`` (RESOLVE 0xF0, RESOLVE_PTR 0xF1, HTTP resistance,
optimistic data), proposal 304 + the tor manual (extended REP codes 0xF0-0xF7),
proposal 351 (``<torS0X>`` usernames).  Behaviour follows C tor's
``proto_socks.c`` unless a comment says otherwise.

Usage (the asyncio server owns the socket)::

    hs = SocksHandshake(extended_errors=port.extended_errors)
    hs.receive_data(chunk)
    transport.write(hs.data_to_send())
    if hs.error: close
    elif hs.request: open the stream; later write hs.reply_connected() / hs.reply_error(code)
    optimistic data: hs.leftover (bytes that arrived after the request)

Nothing here raises on client input: a protocol violation sets ``error`` and queues
whatever reply the protocol allows in ``data_to_send()``; the server must then close.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Literal

__all__ = [
    "MAX_HANDSHAKE_BUFFER",
    "SocksCommand",
    "SocksHandshake",
    "SocksReply",
    "SocksRequest",
    "downgrade_extended",
    "socks5_reply_for_end_reason",
]


class SocksCommand(IntEnum):
    CONNECT = 0x01
    RESOLVE = 0xF0  # Tor extension: hostname -> address (SOCKS4a and SOCKS5)
    RESOLVE_PTR = 0xF1  # Tor extension: address -> hostname (SOCKS5 only)


class SocksReply(IntEnum):
    """SOCKS5 REP codes: RFC 1928 §6, then Tor's extended codes (ExtendedErrors only)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08
    # Proposal 304 (F0-F5) and the C tor manual (F6, F7):
    HS_DESC_NOT_FOUND = 0xF0
    HS_DESC_INVALID = 0xF1
    HS_INTRO_FAILED = 0xF2
    HS_REND_FAILED = 0xF3
    HS_MISSING_CLIENT_AUTH = 0xF4
    HS_WRONG_CLIENT_AUTH = 0xF5
    HS_BAD_ADDRESS = 0xF6
    HS_INTRO_TIMEDOUT = 0xF7


SOCKS4_GRANTED = 0x5A
SOCKS4_REJECTED = 0x5B

# Limits.  A hostname is at most 255 bytes (the SOCKS5 length byte; C tor's
# MAX_SOCKS_ADDR_LEN - 1 for SOCKS4a).  C tor caps a whole SOCKS message at 512
# bytes; we allow a SOCKS4 user id of that size so the longest message is bounded.
MAX_HOSTNAME_LEN = 255
MAX_SOCKS4_USERID_LEN = 512
# The most the handshake ever holds while waiting for the rest of one message
# (a SOCKS4a request: header, user id, NUL, hostname, NUL).
MAX_HANDSHAKE_BUFFER = 8 + MAX_SOCKS4_USERID_LEN + 1 + MAX_HOSTNAME_LEN + 1

# Proposal 351: usernames starting with this magic carry a format byte.  Only
# format "0" (remainder empty; the password is the isolation string) is defined
# for a SOCKS port without RPC, so anything else with the magic is refused.
TOR_SOCKS_MAGIC = b"<torS0X>"

AddressType = Literal["hostname", "ipv4", "ipv6"]


@dataclass(frozen=True)
class SocksRequest:
    version: int  # 4 (also for 4a) or 5
    command: SocksCommand
    host: str  # lower-cased hostname, or IP text without brackets ("::1", "10.0.0.1")
    port: int
    # What ``host`` is (not the raw ATYP): a hostname field holding an IP literal
    # is reported as that IP, so the server has one way to format RELAY_BEGIN.
    address_type: AddressType
    username: bytes | None  # SOCKS5 RFC 1929 username (may be b""), SOCKS4 user id, or None
    password: bytes | None


# --- RELAY_END reason -> SOCKS5 REP (C tor reasons.c: stream_end_reason_to_socks5_response)

_END_REASON_TO_REP: dict[int, SocksReply] = {
    0: SocksReply.SUCCEEDED,
    1: SocksReply.GENERAL_FAILURE,  # MISC
    2: SocksReply.HOST_UNREACHABLE,  # RESOLVEFAILED
    3: SocksReply.CONNECTION_REFUSED,  # CONNECTREFUSED
    4: SocksReply.NOT_ALLOWED,  # EXITPOLICY
    5: SocksReply.GENERAL_FAILURE,  # DESTROY
    6: SocksReply.CONNECTION_REFUSED,  # DONE before CONNECTED: the other side hung up
    7: SocksReply.TTL_EXPIRED,  # TIMEOUT
    8: SocksReply.HOST_UNREACHABLE,  # NOROUTE
    9: SocksReply.GENERAL_FAILURE,  # HIBERNATING
    10: SocksReply.GENERAL_FAILURE,  # INTERNAL
    11: SocksReply.GENERAL_FAILURE,  # RESOURCELIMIT
    12: SocksReply.CONNECTION_REFUSED,  # CONNRESET
    13: SocksReply.GENERAL_FAILURE,  # TORPROTOCOL
    14: SocksReply.GENERAL_FAILURE,  # NOTDIRECTORY (C tor: unrecognised -> general)
    15: SocksReply.NOT_ALLOWED,  # ENTRYPOLICY
    # C tor's client-internal reasons (never on the wire):
    257: SocksReply.GENERAL_FAILURE,  # CANT_ATTACH
    258: SocksReply.NETWORK_UNREACHABLE,  # NET_UNREACHABLE
    259: SocksReply.GENERAL_FAILURE,  # SOCKSPROTOCOL
    262: SocksReply.GENERAL_FAILURE,  # PRIVATE_ADDR
}
_END_REASON_MASK = 0x1FF  # C tor keeps flags above bit 9


def socks5_reply_for_end_reason(reason: int) -> int:
    """The SOCKS5 REP a client sees when its stream ended with RELAY_END ``reason``."""
    return _END_REASON_TO_REP.get(reason & _END_REASON_MASK, SocksReply.GENERAL_FAILURE)


def downgrade_extended(
    code: int, extended_errors: bool, fallback: int = SocksReply.GENERAL_FAILURE
) -> int:
    """Hide Tor's extended REP codes (0xF0-0xF7) from ports without ``ExtendedErrors``.

    C tor then sends what the stream's END reason maps to (descriptor not found and
    introduction failures close with RESOLVEFAILED -> 0x04; client-auth problems with
    MISC -> 0x01; a bad onion address with TORPROTOCOL -> 0x01).  Pass that as
    ``fallback``, e.g. ``socks5_reply_for_end_reason(reason)``; it defaults to 0x01.
    """
    if 0xF0 <= code <= 0xF7 and not extended_errors:
        return fallback
    return code


# --- the handshake


class _State(Enum):
    START = "start"  # nothing parsed yet: version byte decides SOCKS4 or 5
    S5_NEED_AUTH = "s5-need-auth"  # we chose method 2: an RFC 1929 message must follow
    S5_NO_AUTH = "s5-no-auth"  # we chose method 0: request (or a tolerated RFC 1929 message)
    S5_REQUEST = "s5-request"
    DONE = "done"
    ERROR = "error"


class _Reject(Exception):
    """Internal: the client broke the protocol; ``reply`` is what we may still tell it."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply


def _socks5_error(code: int) -> bytes:
    # C tor answers with an all-zero IPv4 BND.ADDR/BND.PORT.
    return bytes((5, code, 0, 1)) + bytes(6)


_SOCKS4_REJECT = bytes((0, SOCKS4_REJECTED)) + bytes(6)
_AUTH_FAILED = b"\x01\x01"  # RFC 1929: non-zero status, then the server closes

_HTTP_FIRST_BYTES = frozenset(b"GHPCODT")  # GET HEAD POST PUT CONNECT OPTIONS DELETE TRACE
_HTTP_REPLY = (
    b"HTTP/1.0 501 Tor is not an HTTP Proxy\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n"
    b"<html><head><title>This is a SOCKS proxy, not an HTTP proxy</title></head>\n"
    b"<body><h1>This is a SOCKS proxy, not an HTTP proxy</h1>\n"
    b"<p>Your application sent an HTTP request to a Tor SOCKS port. Configure it to\n"
    b"use a SOCKS proxy (SOCKS5 with remote DNS, e.g. socks5h://) at this address\n"
    b"instead of an HTTP proxy.</p></body></html>\n"
)

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_S4_HEADER = struct.Struct("!BBHI")


def _valid_hostname(name: str) -> bool:
    """C tor's string_is_valid_nonrfc_hostname: LDH labels, '_' allowed, one trailing dot."""
    labels = name.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    return all(
        label and label[0] not in "-_" and all(c in _HOST_CHARS for c in label) for label in labels
    )


def _classify(text: str) -> tuple[str, AddressType] | None:
    """Normalise a destination given as text; None if it is not a valid destination."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else None
    if inner is not None:
        try:
            return str(ipaddress.IPv6Address(inner)), "ipv6"
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(text)), "ipv4"
    except ValueError:
        pass
    if ":" in text and "%" not in text:  # no zone ids: they mean nothing to an exit
        try:
            return str(ipaddress.IPv6Address(text)), "ipv6"
        except ValueError:
            return None
    if _valid_hostname(text):
        return text.lower(), "hostname"
    return None


def _decode_host(raw: bytes) -> tuple[str, AddressType] | None:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return _classify(text) if text else None


class SocksHandshake:
    """One client's SOCKS handshake, server side.  Feed bytes, read replies and the request."""

    def __init__(self, *, extended_errors: bool = False, prefer_no_auth: bool = False) -> None:
        # extended_errors: the port's ExtendedErrors flag (see reply_error).
        # prefer_no_auth: PreferSOCKSNoAuth (implied by NoIsolateSOCKSAuth) - pick
        # method 0 over 2 when a SOCKS5 client offers both.
        self._extended_errors = extended_errors
        self._prefer_no_auth = prefer_no_auth
        self._state = _State.START
        self._buf = bytearray()
        self._out = bytearray()
        self._request: SocksRequest | None = None
        self._error: str | None = None
        self._leftover = b""
        self._username: bytes | None = None
        self._password: bytes | None = None
        self._replied = False

    # -- input side

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client.  Never raises on bad input (see ``error``)."""
        if self._state is _State.DONE:
            self._leftover += data  # more optimistic data before the server took the rest
            return
        if self._state is _State.ERROR:
            return
        self._buf += data
        while self._state not in (_State.DONE, _State.ERROR):
            try:
                used = self._step()
            except _Reject as exc:
                self._state = _State.ERROR
                self._error = exc.message
                self._out += exc.reply
                self._buf.clear()
                return
            if used is None:  # the current message is incomplete
                break
            del self._buf[:used]
        if self._state is _State.DONE:
            self._leftover += bytes(self._buf)
            self._buf.clear()

    def data_to_send(self) -> bytes:
        """Pending handshake bytes for the client (method choice, auth status, error replies)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def request(self) -> SocksRequest | None:
        return self._request

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def leftover(self) -> bytes:
        """Bytes received after the request (optimistic data), to be sent on the stream."""
        return self._leftover

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a message (<= MAX_HANDSHAKE_BUFFER)."""
        return len(self._buf)

    # -- parsing: each step returns bytes consumed, or None when it needs more

    def _step(self) -> int | None:
        if self._state is _State.START:
            return self._parse_start()
        if self._state is _State.S5_NEED_AUTH:
            return self._parse_userpass()
        if self._state is _State.S5_NO_AUTH:
            if not self._buf:
                return None
            # Like C tor: accept an RFC 1929 message although we chose "no auth".
            if self._buf[0] == 0x01:
                return self._parse_userpass()
            self._state = _State.S5_REQUEST
            return 0
        return self._parse_socks5_request()

    def _parse_start(self) -> int | None:
        buf = self._buf
        if not buf:
            return None
        version = buf[0]
        if version == 5:
            return self._parse_greeting()
        if version == 4:
            return self._parse_socks4()
        if version in _HTTP_FIRST_BYTES:
            raise _Reject("client sent HTTP to a SOCKS port", _HTTP_REPLY)
        raise _Reject(f"unknown SOCKS version {version:#04x}")

    def _parse_greeting(self) -> int | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        n_methods = buf[1]
        if n_methods == 0:
            raise _Reject("SOCKS5 greeting offers no methods", b"\x05\xff")
        if len(buf) < 2 + n_methods:
            return None
        methods = buf[2 : 2 + n_methods]
        if 0x02 in methods and not (self._prefer_no_auth and 0x00 in methods):
            self._out += b"\x05\x02"
            self._state = _State.S5_NEED_AUTH
        elif 0x00 in methods:
            self._out += b"\x05\x00"
            self._state = _State.S5_NO_AUTH
        else:
            raise _Reject("SOCKS5 client offers neither no-auth nor username/password", b"\x05\xff")
        return 2 + n_methods

    def _parse_userpass(self) -> int | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        if buf[0] != 0x01:
            raise _Reject(f"bad RFC 1929 version {buf[0]:#04x}", _AUTH_FAILED)
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        username = bytes(buf[2 : 2 + ulen])
        # Empty fields are allowed (C tor, for broken clients): they are isolation keys.
        if username.startswith(TOR_SOCKS_MAGIC) and username != TOR_SOCKS_MAGIC + b"0":
            raise _Reject("unsupported <torS0X> username format (proposal 351)", _AUTH_FAILED)
        self._username = username
        self._password = bytes(buf[3 + ulen : end])
        self._out += b"\x01\x00"
        self._state = _State.S5_REQUEST
        return end

    def _parse_socks5_request(self) -> int | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        version, command, reserved, atyp = buf[0], buf[1], buf[2], buf[3]
        if version != 5:
            raise _Reject(
                f"SOCKS5 request has version {version:#04x}",
                _socks5_error(SocksReply.GENERAL_FAILURE),
            )
        if command not in (SocksCommand.CONNECT, SocksCommand.RESOLVE, SocksCommand.RESOLVE_PTR):
            # BIND (2), UDP ASSOCIATE (3) and anything unknown.
            raise _Reject(
                f"unsupported SOCKS5 command {command:#04x}",
                _socks5_error(SocksReply.COMMAND_NOT_SUPPORTED),
            )
        if reserved != 0:
            raise _Reject(
                "SOCKS5 reserved byte is not zero", _socks5_error(SocksReply.GENERAL_FAILURE)
            )
        if atyp == 1:
            end = 4 + 4 + 2
            if len(buf) < end:
                return None
            dest: tuple[str, AddressType] | None = (
                str(ipaddress.IPv4Address(bytes(buf[4:8]))),
                "ipv4",
            )
        elif atyp == 4:
            end = 4 + 16 + 2
            if len(buf) < end:
                return None
            dest = (str(ipaddress.IPv6Address(bytes(buf[4:20]))), "ipv6")
        elif atyp == 3:
            if len(buf) < 5:
                return None
            end = 5 + buf[4] + 2
            if len(buf) < end:
                return None
            dest = _decode_host(bytes(buf[5 : end - 2]))
        else:
            raise _Reject(
                f"unknown SOCKS5 address type {atyp:#04x}",
                _socks5_error(SocksReply.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        (port,) = struct.unpack_from("!H", buf, end - 2)
        if dest is None:
            raise _Reject(
                "SOCKS5 request has a malformed hostname", _socks5_error(SocksReply.GENERAL_FAILURE)
            )
        self._finish(5, SocksCommand(command), dest, port, _socks5_error)
        return end

    def _parse_socks4(self) -> int | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        command = buf[1]
        if command not in (SocksCommand.CONNECT, SocksCommand.RESOLVE):
            # BIND, and RESOLVE_PTR (SOCKS5 only), are refused like C tor does.
            raise _Reject(f"unsupported SOCKS4 command {command:#04x}", _SOCKS4_REJECT)
        if len(buf) < 8:
            return None
        _, _, port, ip = _S4_HEADER.unpack_from(buf)
        if ip == 0:
            raise _Reject("SOCKS4 destination address is 0.0.0.0", _SOCKS4_REJECT)
        nul = buf.find(b"\x00", 8)
        if nul < 0:
            if len(buf) - 8 > MAX_SOCKS4_USERID_LEN:
                raise _Reject("SOCKS4 user id too long", _SOCKS4_REJECT)
            return None
        if nul - 8 > MAX_SOCKS4_USERID_LEN:
            raise _Reject("SOCKS4 user id too long", _SOCKS4_REJECT)
        userid = bytes(buf[8:nul])
        end = nul + 1
        dest: tuple[str, AddressType] | None
        if ip >> 8 == 0:  # SOCKS4a: 0.0.0.x, hostname follows the user id
            host_end = buf.find(b"\x00", end)
            if host_end < 0:
                if len(buf) - end > MAX_HOSTNAME_LEN:
                    raise _Reject("SOCKS4a hostname too long", _SOCKS4_REJECT)
                return None
            if host_end - end > MAX_HOSTNAME_LEN:
                raise _Reject("SOCKS4a hostname too long", _SOCKS4_REJECT)
            dest = _decode_host(bytes(buf[end:host_end]))
            end = host_end + 1
        else:
            dest = (str(ipaddress.IPv4Address(ip)), "ipv4")
        if dest is None:
            raise _Reject("SOCKS4a request has a malformed hostname", _SOCKS4_REJECT)
        # C tor keeps a SOCKS4 user id only when it is non-empty.
        self._username = userid or None
        self._finish(4, SocksCommand(command), dest, port, lambda _code: _SOCKS4_REJECT)
        return end

    def _finish(
        self,
        version: int,
        command: SocksCommand,
        dest: tuple[str, AddressType],
        port: int,
        error_reply: Callable[[int], bytes],
    ) -> None:
        host, address_type = dest
        if command is SocksCommand.CONNECT and port == 0:
            # C tor refuses this later ("Application asked to connect to port 0").
            raise _Reject("request to connect to port 0", error_reply(SocksReply.GENERAL_FAILURE))
        if command is SocksCommand.RESOLVE_PTR and address_type == "hostname":
            raise _Reject(
                "RESOLVE_PTR needs an IP address",
                error_reply(SocksReply.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        self._request = SocksRequest(
            version=version,
            command=command,
            host=host,
            port=port,
            address_type=address_type,
            username=self._username,
            password=self._password,
        )
        self._state = _State.DONE

    # -- replies, once the server knows the outcome

    def _take_reply(self) -> SocksRequest | None:
        if self._request is None:
            raise RuntimeError("no SOCKS request to reply to")
        if self._replied:
            return None  # like C tor: a second reply is dropped, never sent
        self._replied = True
        return self._request

    def reply_connected(self, bound_address: str = "0.0.0.0", bound_port: int = 0) -> bytes:
        """Success reply for CONNECT (Tor does not know the exit's bound address: zeros)."""
        req = self._take_reply()
        if req is None:
            return b""
        addr = ipaddress.ip_address(bound_address)
        if req.version == 4:
            packed = addr.packed if addr.version == 4 else bytes(4)
            return bytes((0, SOCKS4_GRANTED)) + struct.pack("!H", bound_port) + packed
        atyp = 1 if addr.version == 4 else 4
        return bytes((5, 0, 0, atyp)) + addr.packed + struct.pack("!H", bound_port)

    def reply_resolved(self, answer: str | bytes, ttl: int) -> bytes:
        """Success reply for RESOLVE (an address) or RESOLVE_PTR (a hostname).

        ``answer`` is IP text, a packed 4/16-byte address (RESOLVE), or a hostname
        (str, or bytes for RESOLVE_PTR).  ``ttl`` has no field in SOCKS; C tor only
        uses it for its own DNS cache, so it is accepted and not sent.
        """
        req = self._take_reply()
        if req is None:
            return b""
        del ttl
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        name: bytes | None = None
        if isinstance(answer, bytes):
            if req.command is not SocksCommand.RESOLVE_PTR and len(answer) in (4, 16):
                ip = ipaddress.ip_address(answer)
            else:
                name = answer
        else:
            try:
                ip = ipaddress.ip_address(answer)
            except ValueError:
                name = answer.encode("ascii")
        if req.version == 4:
            if ip is not None and ip.version == 4:
                return bytes((0, SOCKS4_GRANTED, 0, 0)) + ip.packed
            return _SOCKS4_REJECT  # SOCKS4 can carry only an IPv4 answer (as C tor)
        if ip is not None:
            return bytes((5, 0, 0, 1 if ip.version == 4 else 4)) + ip.packed + b"\x00\x00"
        assert name is not None
        if not 0 < len(name) <= 255:
            raise ValueError("hostname answer must be 1..255 bytes")
        return bytes((5, 0, 0, 3, len(name))) + name + b"\x00\x00"

    def reply_error(self, code: int, *, fallback: int = SocksReply.GENERAL_FAILURE) -> bytes:
        """Failure reply with SOCKS5 REP ``code`` (SOCKS4 clients get 0x5B).

        Extended codes (0xF0-0xF7) become ``fallback`` unless this port has
        ExtendedErrors; see ``downgrade_extended``.
        """
        if not 0 < code <= 0xFF:
            raise ValueError(f"not a SOCKS5 error code: {code}")
        req = self._take_reply()
        if req is None:
            return b""
        if req.version == 4:
            return _SOCKS4_REJECT
        return _socks5_error(downgrade_extended(code, self._extended_errors, fallback))
