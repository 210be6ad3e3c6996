"""Pluggable transports, sans-I/O (pt-spec): what a managed transport proxy says on its
stdout, the environment it is started with, and the SOCKS5 handshake through it.

    parser = ManagedProxyParser()
    for event in parser.feed(chunk):   # VERSION, CMETHOD ..., CMETHODS DONE, LOG, STATUS
        ...
    user, password = socks_auth_for_args([("cert", "..."), ("iat-mode", "0")])
    hs = Socks5Connect(host, port, user, password)   # bytes out / bytes in, then done

Nothing here starts processes or opens sockets (see puretor.aio.pt).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MANAGED_TRANSPORT_VERSION = "1"
MAX_LINE = 8192  # longer stdout lines are a protocol error (C tor: a full buffer)
MAX_SOCKS5_AUTH_FIELD = 255
MAX_SOCKS5_AUTH_TOTAL = 2 * MAX_SOCKS5_AUTH_FIELD


class PtProtocolError(ValueError):
    """The transport proxy said something pt-spec does not allow."""


# --- what the proxy says -----------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    version: str


@dataclass(frozen=True)
class VersionError:
    message: str


@dataclass(frozen=True)
class EnvError:
    message: str


@dataclass(frozen=True)
class CMethod:
    transport: str
    protocol: str  # "socks5" (or "socks4")
    host: str
    port: int
    options: tuple[str, ...] = ()  # ARGS=... OPT-ARGS=... (unused by clients)


@dataclass(frozen=True)
class CMethodError:
    transport: str
    message: str


@dataclass(frozen=True)
class CMethodsDone:
    pass


@dataclass(frozen=True)
class ProxyDone:
    pass


@dataclass(frozen=True)
class ProxyError:
    message: str


@dataclass(frozen=True)
class Log:
    severity: str  # error, warning, notice, info, debug
    message: str


@dataclass(frozen=True)
class Status:
    transport: str | None
    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Unknown:
    line: str


PtEvent = (
    Version
    | VersionError
    | EnvError
    | CMethod
    | CMethodError
    | CMethodsDone
    | ProxyDone
    | ProxyError
    | Log
    | Status
    | Unknown
)

_TRANSPORT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LOG_SEVERITIES = frozenset({"error", "warning", "notice", "info", "debug"})


def parse_kv_line(text: str) -> list[tuple[str, str]]:
    """pt-spec §3.3.4/3.3.5 (C tor kvline_parse with KV_QUOTED): ``K=V`` items separated by
    spaces; a value may be a C-quoted string with \\-escapes."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        space = text.find(" ", i)
        if eq < 0 or (0 <= space < eq):
            raise PtProtocolError(f"not a K=V item: {text[i:][:60]!r}")
        key = text[i:eq]
        if not key:
            raise PtProtocolError("empty key")
        i = eq + 1
        if i < n and text[i] == '"':
            value, i = _unquote(text, i)
        else:
            end = text.find(" ", i)
            end = n if end < 0 else end
            value, i = text[i:end], end
        out.append((key, value))
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'"}


def _unquote(text: str, i: int) -> tuple[str, int]:
    """A C-quoted string starting at text[i] == '"'; (value, index after the closing quote)."""
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(text):
                break
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt in "01234567":
                m = re.match(r"[0-7]{1,3}", text[i + 1 :])
                assert m is not None
                out.append(chr(int(m.group(0), 8) & 0xFF))
                i += 1 + len(m.group(0))
                continue
            raise PtProtocolError(f"bad escape \\{nxt} in a quoted string")
        out.append(c)
        i += 1
    raise PtProtocolError("unterminated quoted string")


def parse_line(line: str) -> PtEvent:
    """One line of a managed proxy's stdout (without its newline)."""
    keyword, _, rest = line.partition(" ")
    rest = rest.strip()
    if keyword == "VERSION":
        if not rest or " " in rest:
            raise PtProtocolError(f"bad VERSION line: {line!r}")
        return Version(rest)
    if keyword == "VERSION-ERROR":
        return VersionError(rest)
    if keyword == "ENV-ERROR":
        return EnvError(rest)
    if keyword == "CMETHOD":
        words = rest.split(" ")
        if len(words) < 3:
            raise PtProtocolError(f"too few arguments in CMETHOD line: {line!r}")
        name, protocol, addrport = words[:3]
        if not _TRANSPORT_NAME.match(name):
            raise PtProtocolError(f"bad transport name in CMETHOD line: {name!r}")
        if protocol not in ("socks4", "socks5"):
            raise PtProtocolError(f"unknown proxy protocol {protocol!r} in CMETHOD line")
        host, port = _parse_addrport(addrport)
        return CMethod(name, protocol, host, port, tuple(words[3:]))
    if keyword == "CMETHOD-ERROR":
        name, _, message = rest.partition(" ")
        if not name:
            raise PtProtocolError("CMETHOD-ERROR without a transport name")
        return CMethodError(name, message)
    if line == "CMETHODS DONE":
        return CMethodsDone()
    if line == "PROXY DONE":
        return ProxyDone()
    if keyword == "PROXY-ERROR":
        return ProxyError(rest)
    if keyword == "LOG":
        kv = dict(parse_kv_line(rest))
        severity = kv.get("SEVERITY", "")
        if severity not in _LOG_SEVERITIES or "MESSAGE" not in kv:
            raise PtProtocolError(f"bad LOG line: {line[:120]!r}")
        return Log(severity, kv["MESSAGE"])
    if keyword == "STATUS":
        items = parse_kv_line(rest)
        transport = next((v for k, v in items if k == "TRANSPORT"), None)
        return Status(transport, tuple((k, v) for k, v in items if k != "TRANSPORT"))
    return Unknown(line)


def _parse_addrport(text: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
    if m is None:
        raise PtProtocolError(f"bad address:port {text!r}")
    try:
        host = str(ipaddress.ip_address(m.group(1) or m.group(3)))
    except ValueError:
        raise PtProtocolError(f"bad address {text!r}") from None
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise PtProtocolError(f"bad port in {text!r}")
    return host, port


@dataclass
class ManagedProxyParser:
    """The configuration protocol of one managed proxy run (pt-spec §3.3): bytes in, events
    out; `methods` and `errors` once `done`.  Lines after ``CMETHODS DONE`` (LOG, STATUS)
    keep coming as events."""

    transports: tuple[str, ...] = ()  # what we asked for: CMETHODs for others are refused
    methods: dict[str, CMethod] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[PtEvent]:
        self._buf += data
        events: list[PtEvent] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    raise PtProtocolError(f"a line longer than {MAX_LINE} bytes")
                return events
            raw = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            if len(raw) > MAX_LINE:
                raise PtProtocolError(f"a line longer than {MAX_LINE} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PtProtocolError(f"a line that is not UTF-8: {raw[:60]!r}") from None
            events.append(self._handle(parse_line(line)))

    def _handle(self, event: PtEvent) -> PtEvent:
        if isinstance(event, Version):
            if event.version != MANAGED_TRANSPORT_VERSION:
                raise PtProtocolError(
                    f"unsupported managed proxy protocol version {event.version!r}"
                )
            self.version = event.version
        elif isinstance(event, VersionError):
            raise PtProtocolError(
                f"the proxy supports no protocol version we speak ({event.message})"
            )
        elif isinstance(event, EnvError):
            raise PtProtocolError(f"the proxy did not like its environment: {event.message}")
        elif isinstance(event, CMethod | CMethodError | CMethodsDone):
            if self.version is None:
                raise PtProtocolError("the proxy sent a CMETHOD line before VERSION")
            if isinstance(event, CMethod):
                if self.transports and event.transport not in self.transports:
                    raise PtProtocolError(f"the proxy offers {event.transport!r}, not asked for")
                if event.protocol != "socks5":
                    raise PtProtocolError(f"{event.transport}: only socks5 proxies are supported")
                self.methods[event.transport] = event
            elif isinstance(event, CMethodError):
                self.errors[event.transport] = event.message
            else:
                self.done = True
        return event


def managed_env(
    base: Mapping[str, str], *, state_dir: str, transports: Sequence[str], proxy: str | None = None
) -> dict[str, str]:
    """The environment of a client transport proxy (pt-spec §3.2)."""
    env = dict(base)
    env.update(
        TOR_PT_MANAGED_TRANSPORT_VER=MANAGED_TRANSPORT_VERSION,
        TOR_PT_STATE_LOCATION=state_dir,
        TOR_PT_CLIENT_TRANSPORTS=",".join(transports),
        TOR_PT_EXIT_ON_STDIN_CLOSE="1",
    )
    if proxy is not None:
        env["TOR_PT_PROXY"] = proxy
    return env


# --- the bridge's arguments in the SOCKS5 handshake -----------------------------------------


def escape_arg(text: str) -> str:
    """C tor's tor_escape_str_for_pt_args(s, ";\\\\"): backslash before ';' and '\\'."""
    return re.sub(r"([;\\])", r"\\\1", text)


def socks_auth_for_args(args: Sequence[tuple[str, str]]) -> tuple[bytes, bytes] | None:
    """pt-spec §3.5: the bridge's k=v items as SOCKS5 username/password, or None without any.

    ``k=v`` items escaped and joined with ';'; the first 255 bytes are the username, the
    rest the password, or a single NUL byte when nothing is left (RFC 1929 wants one)."""
    if not args:
        return None
    text = ";".join(escape_arg(f"{k}={v}") for k, v in args).encode("utf-8")
    if len(text) > MAX_SOCKS5_AUTH_TOTAL:
        raise ValueError(
            f"the bridge's transport arguments are {len(text)} bytes; SOCKS5 carries "
            f"at most {MAX_SOCKS5_AUTH_TOTAL}"
        )
    if len(text) > MAX_SOCKS5_AUTH_FIELD:
        return text[:MAX_SOCKS5_AUTH_FIELD], text[MAX_SOCKS5_AUTH_FIELD:]
    return text, b"\x00"


def split_args(text: bytes) -> list[tuple[str, str]]:
    """The inverse of `socks_auth_for_args` (username + password without the NUL): what a
    transport proxy reads back.  Used by tests."""
    items, cur, i = [], [], 0
    s = text.decode("utf-8")
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i + 1])
            i += 2
            continue
        if c == ";":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return [tuple(item.split("=", 1)) for item in items if item]  # type: ignore[misc]


# --- SOCKS5 CONNECT through the proxy (RFC 1928/1929) -------------------------------------

_SOCKS5_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class Socks5Error(ConnectionError):
    def __init__(self, message: str, reply: int | None = None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass
class Socks5Connect:
    """A SOCKS5 client handshake: `start()` bytes to send, then `receive(data)` until `done`
    (returns more bytes to send).  Raises `Socks5Error` on refusal or nonsense."""

    host: str
    port: int
    username: bytes | None = None
    password: bytes | None = None
    done: bool = False
    _state: str = "greeting"
    _buf: bytearray = field(default_factory=bytearray)

    def start(self) -> bytes:
        methods = b"\x02" if self.username is not None else b"\x00"
        return b"\x05\x01" + methods

    def receive(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while not self.done:
            step = self._step()
            if step is None:
                break
            out += step
        return out

    def _step(self) -> bytes | None:
        buf = self._buf
        if self._state == "greeting":
            if len(buf) < 2:
                return None
            ver, method = buf[0], buf[1]
            del buf[:2]
            if ver != 5:
                raise Socks5Error(f"not a SOCKS5 proxy (version {ver})")
            wanted = 2 if self.username is not None else 0
            if method != wanted:
                raise Socks5Error(f"the proxy chose authentication method {method}, not {wanted}")
            if method == 2:
                user, pw = self.username or b"", self.password or b"\x00"
                if not 0 < len(user) <= 255 or not 0 < len(pw) <= 255:
                    raise Socks5Error("SOCKS5 username/password of bad length")
                self._state = "auth"
                return b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw
            self._state = "reply"
            return self._request()
        if self._state == "auth":
            if len(buf) < 2:
                return None
            status = buf[1]
            del buf[:2]
            if status != 0:
                raise Socks5Error("the proxy refused the bridge's arguments (SOCKS5 auth failed)")
            self._state = "reply"
            return self._request()
        if len(buf) < 5:
            return None
        ver, rep, atyp = buf[0], buf[1], buf[3]
        if ver != 5:
            raise Socks5Error(f"bad SOCKS5 reply version {ver}")
        if rep != 0:
            raise Socks5Error(
                f"the proxy could not connect: {_SOCKS5_REPLIES.get(rep, f'reply {rep}')}", rep
            )
        size = {1: 4, 4: 16, 3: 1 + buf[4]}.get(atyp)
        if size is None:
            raise Socks5Error(f"bad SOCKS5 address type {atyp}")
        need = 4 + size + 2
        if len(buf) < need:
            return None
        del buf[:need]
        self.done = True
        return b""

    def _request(self) -> bytes:
        addr = ipaddress.ip_address(self.host)
        atyp = b"\x01" if addr.version == 4 else b"\x04"
        return b"\x05\x01\x00" + atyp + addr.packed + self.port.to_bytes(2, "big")

    @property
    def leftover(self) -> bytes:
        """Bytes after the reply (the peer spoke early): belong to the tunnelled protocol."""
        return bytes(self._buf)


# --- SOCKS4 and HTTP CONNECT (Socks4Proxy, HTTPSProxy) --------------------------------------


def socks4_request(host: str, port: int) -> bytes:
    """SOCKS4 CONNECT to an IPv4 address, with an empty user id (as C tor sends it)."""
    addr = ipaddress.ip_address(host)
    if addr.version != 4:
        raise Socks5Error("a SOCKS4 proxy can only connect to IPv4 addresses")
    return b"\x04\x01" + port.to_bytes(2, "big") + addr.packed + b"\x00"


def socks4_reply(data: bytes) -> int | None:
    """Bytes the 8-byte reply took (None: need more); raises Socks5Error on refusal."""
    if len(data) < 8:
        return None
    if data[0] != 0:
        raise Socks5Error(f"bad SOCKS4 reply version {data[0]}")
    if data[1] != 0x5A:
        raise Socks5Error(f"the SOCKS4 proxy refused the connection (code {data[1]})", data[1])
    return 8


def http_connect_request(host: str, port: int, authenticator: str | None = None) -> bytes:
    """C tor's CONNECT request (connection.c connection_https_proxy_connect)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if authenticator is None:
        return f"CONNECT {where} HTTP/1.0\r\n\r\n".encode()
    auth = base64.b64encode(authenticator.encode()).decode()
    return (
        f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    ).encode()


MAX_HTTP_PROXY_HEADERS = 16 * 1024


def http_connect_reply(data: bytes) -> int | None:
    """Bytes the proxy's response head took (None: need more); raises Socks5Error (a
    ConnectionError) unless the status is 2xx, as C tor's connection_read_https_proxy_response."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HTTP_PROXY_HEADERS:
            raise Socks5Error("the HTTPS proxy's response headers are too long")
        return None
    status_line = data[: data.find(b"\r\n")].decode("latin-1")
    m = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", status_line)
    if m is None:
        raise Socks5Error(f"the HTTPS proxy sent no HTTP status line: {status_line[:80]!r}")
    if not m.group(1).startswith("2"):
        raise Socks5Error(f"the HTTPS proxy answered {m.group(1)} {m.group(2) or ''}".rstrip())
    return end + 4
