"""Sans-I/O HTTP CONNECT request parser and replies for HTTPTunnelPort.

References: torspec ``http-connect.md`` and proposal 365 (``Tor-Stream-Isolation``,
``Tor-Request-Failed``, OPTIONS, 503 for RESOLVEFAILED/NOROUTE), as C tor 0.4.9
implements them (``connection_edge.c``: connection_ap_process_http_connect,
``reasons.c``: end_reason_to_http_connect_response_line).

Usage (the asyncio server owns the socket)::

    parser = HttpConnectParser(via="puretor 1.0")
    parser.receive_data(chunk)
    if parser.error: write parser.error_reply (b"": close without a word), close
    elif parser.request: CONNECT -> open the stream, reply connect_ok() / connect_failed()
                         OPTIONS -> write options_reply(), keep reading
    bytes after the request head: parser.leftover (optimistic data)

Stricter than C tor where a request could be read two ways (request smuggling): a
CONNECT with a body (Content-Length other than 0, Transfer-Encoding), folded header
lines, bare CR or LF line ends, control characters, and duplicated isolation headers
are all refused with 400.  Nothing here raises on client input.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "MAX_HEAD",
    "NOT_A_PROXY_BODY",
    "HttpConnectParser",
    "HttpRequest",
    "connect_failed",
    "connect_ok",
    "options_reply",
    "reply",
    "status_for_end_reason",
]

MAX_HEAD = 8192  # C tor: fetch_from_buf_http(..., 8192, ...) for the request head
MAX_ADDRESS = 255  # C tor: strlen(addr) >= MAX_SOCKS_ADDR_LEN (256) -> 414
MAX_HEADERS = 100

BAD_REQUEST = "400 Bad Request"
URI_TOO_LONG = "414 Request-URI Too Long"
NO_RPC = "501 Not implemented (No RPC Support)"
METHOD_NOT_ALLOWED = "405 Method Not Allowed"

# C tor's body for any method but CONNECT and OPTIONS (HTTP_CONNECT_IS_NOT_AN_HTTP_PROXY_MSG).
NOT_A_PROXY_BODY = (
    b"<html>\n<head>\n<title>This is an HTTP CONNECT tunnel, not a full HTTP Proxy</title>\n"
    b"</head>\n<body>\n<h1>This is an HTTP CONNECT tunnel, not an HTTP proxy.</h1>\n<p>\n"
    b"It appears you have configured your web browser to use this Tor port as\n"
    b"an HTTP proxy.\n</p><p>\n"
    b"This is not correct: This port is configured as a CONNECT tunnel, not\n"
    b"an HTTP proxy. Please configure your client accordingly.  You can also\n"
    b"use HTTPS; then the client should automatically use HTTP CONNECT.</p>\n<p>\n"
    b'See <a href="https://www.torproject.org/documentation.html">'
    b"https://www.torproject.org/documentation.html</a> for more information.\n</p>\n"
    b"</body>\n</html>\n"
)

# RELAY_END reason -> status line, C tor 0.4.9 (proposal 365 moved RESOLVEFAILED and
# NOROUTE from 404 to 503).
_STATUS_BY_END_REASON = {
    1: "500 Internal Server Error",  # MISC
    2: "503 Service Unavailable (resolve failed)",  # RESOLVEFAILED
    3: "403 Forbidden (connection refused)",  # CONNECTREFUSED
    4: "403 Forbidden (exit policy)",  # EXITPOLICY
    5: "502 Bad Gateway (destroy cell received)",  # DESTROY
    6: "502 Bad Gateway (unexpected close)",  # DONE
    7: "504 Gateway Timeout",  # TIMEOUT
    8: "503 Service Unavailable (no route)",  # NOROUTE
    9: "502 Bad Gateway (hibernating server)",  # HIBERNATING
    10: "502 Bad Gateway (internal error)",  # INTERNAL
    11: "502 Bad Gateway (resource limit)",  # RESOURCELIMIT
    12: "403 Forbidden (connection reset)",  # CONNRESET
    13: "502 Bad Gateway (tor protocol violation)",  # TORPROTOCOL
    15: "403 Forbidden (entry policy violation)",  # ENTRYPOLICY (client-side only)
}
_END_REASON_NAMES = {
    1: "MISC",
    2: "RESOLVEFAILED",
    3: "CONNECTREFUSED",
    4: "EXITPOLICY",
    5: "DESTROY",
    6: "DONE",
    7: "TIMEOUT",
    8: "NOROUTE",
    9: "HIBERNATING",
    10: "INTERNAL",
    11: "RESOURCELIMIT",
    12: "CONNRESET",
    13: "TORPROTOCOL",
    14: "NOTDIRECTORY",
    15: "ENTRYPOLICY",
}
END_REASON_ENTRYPOLICY = 15  # C tor's client-side reason for refusing a request itself


def status_for_end_reason(reason: int) -> str:
    """The status (code and phrase) for a stream that ended with RELAY_END ``reason``."""
    return _STATUS_BY_END_REASON.get(reason & 0xFF, "500 Internal Server Error (weird end reason)")


def reply(
    status: str, via: str, *, connect: bool = True, headers: str = "", body: bytes = b""
) -> bytes:
    """A reply as C tor 0.4.9 shapes it: the status line, ``headers`` (e.g. Allow), an
    empty Tor-Capabilities, then Via on CONNECT replies or Server on the others."""
    origin = f"Via: tor/1.0 tor-network ({via})" if connect else f"Server: tor/1.0 ({via})"
    head = f"HTTP/1.0 {status}\r\n{headers}Tor-Capabilities: \r\n{origin}\r\n"
    return head.encode() + b"\r\n" + body


def connect_ok(via: str) -> bytes:
    return reply("200 OK", via)


def connect_failed(reason: int, via: str) -> bytes:
    """The reply for a CONNECT whose stream failed with RELAY_END ``reason``; its
    machine-readable ``Tor-Request-Failed: end/REASON`` is C tor's."""
    name = _END_REASON_NAMES.get(reason & 0xFF, "MISC")
    origin = f"Via: tor/1.0 tor-network ({via})"
    head = f"HTTP/1.0 {status_for_end_reason(reason)}\r\nTor-Capabilities: \r\n{origin}\r\n"
    return head.encode() + f"Tor-Request-Failed: end/{name}\r\n\r\n".encode()


def options_reply(via: str) -> bytes:
    # Content-Length 0 (not in C tor's reply): the client may send its CONNECT next on
    # this connection, and an HTTP/1.0 reply without one would last until the close.
    allow = "Allow: OPTIONS, CONNECT\r\nContent-Length: 0\r\n"
    return reply("200 OK", via, connect=False, headers=allow)


@dataclass
class HttpRequest:
    method: str  # "CONNECT" or "OPTIONS", upper case
    host: str  # CONNECT: the target host (IPv6 without brackets); OPTIONS: the target
    port: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    version: str = "HTTP/1.0"

    @property
    def isolation_username(self) -> bytes | None:
        """C tor's isolation "username": the Proxy-Authorization header (Basic
        ``tor:<secret>`` decoded, as proposal 365 recommends; anything else as sent)."""
        auth = self.headers.get("proxy-authorization")
        if auth is None:
            return None
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            if decoded.startswith(b"tor:"):
                return decoded
        return auth.encode()

    @property
    def isolation_password(self) -> bytes | None:
        """C tor's isolation "password": Tor-Stream-Isolation (or the legacy
        X-Tor-Stream-Isolation); both, if a client sends both."""
        values = [self.headers.get(n) for n in ("tor-stream-isolation", "x-tor-stream-isolation")]
        if values == [None, None]:
            return None
        return b"\0".join((v or "").encode() for v in values)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_SINGLE = ("proxy-authorization", "tor-stream-isolation", "x-tor-stream-isolation", "host")


def _bad_header_value(value: str) -> bool:
    return any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value)


def _split_authority(target: str) -> tuple[str, int] | str:
    """``host:port`` / ``[v6]:port`` -> (host, port), or the error reply."""
    if target.startswith("["):
        close = target.find("]")
        if close < 0 or target[close + 1 : close + 2] != ":":
            return BAD_REQUEST
        host, port_text = target[1:close], target[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return BAD_REQUEST
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep:
            host, port_text = target, "0"  # C tor reads a missing port as 0 (refused later)
        if not host or ":" in host:
            return BAD_REQUEST
    if len(host) > MAX_ADDRESS:
        return URI_TOO_LONG
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        return BAD_REQUEST
    if not all(c.isalnum() or c in "-._" for c in host.replace(":", "")):
        return BAD_REQUEST
    return host, int(port_text)


def _is_loopback_host(host: str) -> bool:
    """Host header naming this machine (proposal 365: only those may get a non-CONNECT reply)."""
    name = host.strip()
    if name.startswith("["):
        close = name.find("]")
        if close < 0:
            return False
        rest, name = name[close + 1 :], name[1:close]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    elif name.count(":") == 1:
        name, _, port = name.partition(":")
        if not port.isdigit():
            return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HttpConnectParser:
    """One client's request head: feed bytes until ``request`` or ``error`` is set.
    ``via`` names the software in the replies' Via/Server headers."""

    def __init__(self, via: str = "puretor") -> None:
        self.via = via
        self._buf = bytearray()
        self.request: HttpRequest | None = None
        self.error: str | None = None  # why the request was refused (for the log)
        self.error_reply: bytes = b""  # what to send before closing (b"": nothing)
        self.leftover = b""

    def receive_data(self, data: bytes) -> None:
        if self.request is not None:
            self.leftover += data  # bytes after the head: the caller's to forward
            return
        if self.error is not None:
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._fail("request head too long", BAD_REQUEST)
            return
        if end + 4 > MAX_HEAD:
            self._fail("request head too long", BAD_REQUEST)
            return
        head = bytes(self._buf[:end])
        self.leftover = bytes(self._buf[end + 4 :])
        self._buf.clear()
        self._parse(head)

    def reset(self) -> None:
        """Read another request on the same connection (after OPTIONS)."""
        rest = self.leftover
        self.request, self.error, self.error_reply, self.leftover = None, None, b"", b""
        if rest:
            self.receive_data(rest)

    def _fail(self, why: str, status: str | None, *, connect: bool = True) -> None:
        """Refuse: ``status`` None closes without a reply."""
        self.error = why
        self._buf.clear()
        if status is None:
            self.error_reply = b""
        elif status == METHOD_NOT_ALLOWED:
            content = "Content-Type: text/html; charset=iso-8859-1\r\n"
            self.error_reply = reply(
                status, self.via, connect=False, headers=content, body=NOT_A_PROXY_BODY
            )
        else:
            self.error_reply = reply(status, self.via, connect=connect)

    def _parse(self, head: bytes) -> None:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            self._fail("non-ASCII request head", BAD_REQUEST)
            return
        lines = text.split("\r\n")
        if any("\r" in line or "\n" in line or "\0" in line for line in lines):
            self._fail("bare CR or LF, or NUL, in the request head", BAD_REQUEST)
            return
        parts = lines[0].split(" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
            self._fail("malformed request line", BAD_REQUEST)
            return
        method, target, version = parts[0].upper(), parts[1], parts[2]
        headers: dict[str, str] = {}
        if len(lines) - 1 > MAX_HEADERS:
            self._fail("too many headers", BAD_REQUEST)
            return
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not _TOKEN.fullmatch(name) or _bad_header_value(value):
                # Also refuses obs-fold continuation lines (they start with a space).
                self._fail("malformed header line", BAD_REQUEST)
                return
            key = name.lower()
            if key in headers and key in _SINGLE + ("content-length", "transfer-encoding"):
                self._fail(f"duplicated {name} header", BAD_REQUEST)
                return
            headers[key] = value.strip(" \t")
        if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
            self._fail("a request body on a CONNECT tunnel port", BAD_REQUEST)
            return
        if method != "CONNECT":
            # Proposal 365, as C tor 0.4.9: answer nothing but CONNECT unless the Host
            # header names this machine, so that a web page cannot probe the port through
            # DNS rebinding; without one, close silently too.
            host = headers.get("host")
            if host is None or not _is_loopback_host(host):
                self._fail("non-CONNECT request without a loopback Host header", None)
                return
            if method == "OPTIONS":
                if target != "*" and isinstance(_split_authority(target), str):
                    self._fail("bad OPTIONS target", BAD_REQUEST, connect=False)
                    return
                self.request = HttpRequest(method, target, 0, headers, version)
                return
            self._fail(f"method {method} is not CONNECT", METHOD_NOT_ALLOWED)
            return
        if "tor-rpc-target" in headers:
            self._fail("Tor-RPC-Target without RPC support", NO_RPC)
            return
        split = _split_authority(target)
        if isinstance(split, str):
            self._fail("bad CONNECT target", split)
            return
        host, port = split
        self.request = HttpRequest(method, host, port, headers, version)
