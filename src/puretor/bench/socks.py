"""The benchmark's own SOCKS5 + HTTP/1.1 client (asyncio), used for both Tor implementations.

Every fetch is one SOCKS connection (``CONNECT`` by hostname, so the exit resolves), one
``GET`` with ``Connection: close``, and a body checked against its expected SHA-256. Times are
``time.perf_counter()`` seconds from the moment we start connecting to the SOCKS port:

    connected   SOCKS reply "succeeded" received (the stream is open at the exit)
    ttfb        first byte of the HTTP response
    total       last byte of the body

A wrong hash, a short body or a non-200 status is a failure (`FetchResult.ok` is False), never
a figure. `upload` POSTs a body to the test target's ``/upload`` the same way and checks the
SHA-256 the target answers with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import struct
import time
from dataclasses import dataclass, field
from typing import Any

READ_SIZE = 256 * 1024
STREAM_LIMIT = 1 << 20  # StreamReader buffer: few pause/resume round trips at 10-100 MB/s
FLOWING_BYTES = 1 << 20  # a bulk transfer counts as flowing once this much has passed

SOCKS_REPLIES = {
    0x00: "succeeded",
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
    0xF0: "onion service descriptor can not be found",
    0xF1: "onion service descriptor is invalid",
    0xF2: "onion service introduction failed",
    0xF3: "onion service rendezvous failed",
    0xF4: "onion service missing client authorization",
    0xF5: "onion service wrong client authorization",
    0xF6: "onion service invalid address",
    0xF7: "onion service introduction timed out",
}


class SocksError(Exception):
    """The proxy refused: ``code`` is the SOCKS5 REP byte (or -1 for a protocol problem)."""

    def __init__(self, code: int, message: str = "") -> None:
        text = message or SOCKS_REPLIES.get(code, f"reply {code:#04x}")
        super().__init__(f"SOCKS {code:#04x}: {text}" if code >= 0 else text)
        self.code = code

    @property
    def extended(self) -> bool:
        """Tor's extended (onion service) reply codes, proposal 304."""
        return 0xF0 <= self.code <= 0xF7


@dataclass
class Credentials:
    username: str
    password: str = "x"


@dataclass
class FetchResult:
    url: str
    ok: bool = False
    status: int = 0
    size: int = 0
    expected_size: int | None = None
    sha256: str = ""
    expected_sha256: str | None = None
    start: float = 0.0  # perf_counter at the start
    connected: float | None = None  # seconds since start
    ttfb: float | None = None
    total: float | None = None
    error: str = ""
    socks_code: int | None = None
    hash_mismatch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "status": self.status,
            "size": self.size,
            "sha256_ok": (
                None if self.expected_sha256 is None else self.sha256 == self.expected_sha256
            ),
            "connected": _round(self.connected),
            "ttfb": _round(self.ttfb),
            "total": _round(self.total),
            "error": self.error,
            "socks_code": self.socks_code,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host[:port]/path`` -> (host, port, path). Only plain HTTP (the exit sees it)."""
    if not url.startswith("http://"):
        raise ValueError(f"only http:// URLs are benchmarked: {url}")
    rest = url[len("http://") :]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port or 80), "/" + path


def _socks_address(host: str) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raw = host.encode("idna")
        return b"\x03" + bytes([len(raw)]) + raw
    if ip.version == 4:
        return b"\x01" + ip.packed
    return b"\x04" + ip.packed


async def socks_connect(
    proxy: tuple[str, int],
    host: str,
    port: int,
    creds: Credentials | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A SOCKS5 CONNECT through `proxy`; returns the open stream or raises `SocksError`."""
    reader, writer = await asyncio.open_connection(*proxy, limit=STREAM_LIMIT)
    try:
        if creds is None:
            writer.write(b"\x05\x01\x00")
        else:
            writer.write(b"\x05\x01\x02")
        method = await reader.readexactly(2)
        if method[0] != 5:
            raise SocksError(-1, f"not a SOCKS5 proxy (greeting reply {method!r})")
        if method[1] == 0x02:
            if creds is None:
                raise SocksError(-1, "proxy wants username/password")
            u, p = creds.username.encode(), creds.password.encode()
            writer.write(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
            auth = await reader.readexactly(2)
            if auth[1] != 0:
                raise SocksError(-1, f"username/password refused ({auth!r})")
        elif method[1] != 0x00:
            raise SocksError(-1, f"no acceptable SOCKS method ({method[1]:#04x})")
        writer.write(b"\x05\x01\x00" + _socks_address(host) + struct.pack(">H", port))
        head = await reader.readexactly(4)
        if head[0] != 5:
            raise SocksError(-1, f"bad SOCKS reply {head!r}")
        atyp = head[3]
        if atyp == 1:
            await reader.readexactly(4 + 2)
        elif atyp == 4:
            await reader.readexactly(16 + 2)
        elif atyp == 3:
            n = (await reader.readexactly(1))[0]
            await reader.readexactly(n + 2)
        else:
            raise SocksError(-1, f"bad SOCKS reply address type {atyp}")
        if head[1] != 0:
            raise SocksError(head[1])
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def fetch(
    proxy: tuple[str, int],
    url: str,
    *,
    creds: Credentials | None,
    expected_sha256: str | None,
    expected_size: int | None = None,
    timeout: float = 120.0,
    flowing: asyncio.Event | None = None,
) -> FetchResult:
    """GET `url` through the SOCKS proxy, hashing the body as it arrives. Never raises
    (except cancellation): failures are in the result. `flowing` is set once FLOWING_BYTES of
    the body have arrived."""
    result = FetchResult(url, expected_size=expected_size, expected_sha256=expected_sha256)
    result.start = t0 = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    length: int | None = None
    try:
        async with asyncio.timeout(timeout):
            host, port, path = split_url(url)
            reader, writer = await socks_connect(proxy, host, port, creds)
            result.connected = time.perf_counter() - t0
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: puretor-bench\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode()
            )
            first = await reader.read(READ_SIZE)
            if not first:
                raise ConnectionError("connection closed before any response")
            result.ttfb = time.perf_counter() - t0
            buf = bytearray(first)
            while b"\r\n\r\n" not in buf:
                more = await reader.read(READ_SIZE)
                if not more:
                    raise ConnectionError("connection closed inside the response headers")
                buf += more
                if len(buf) > 65536:
                    raise ConnectionError("response headers too long")
            end = buf.index(b"\r\n\r\n")
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split()
            result.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            digest = hashlib.sha256()
            body = buf[end + 4 :]
            digest.update(body)
            size = len(body)
            del buf, body
            while length is None or size < length:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                if flowing is not None and size >= FLOWING_BYTES:
                    flowing.set()
            result.total = time.perf_counter() - t0
            result.size = size
            result.sha256 = digest.hexdigest()
    except SocksError as exc:
        result.error = str(exc)
        result.socks_code = exc.code
    except TimeoutError:
        result.error = f"timed out after {timeout:.0f}s"
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)
    if not result.error:
        if result.status != 200:
            result.error = f"HTTP status {result.status}"
        elif length is not None and result.size != length:
            result.error = f"short body: {result.size} of {length} bytes"
        elif expected_size is not None and result.size != expected_size:
            result.error = f"body is {result.size} bytes, expected {expected_size}"
        elif expected_sha256 is not None and result.sha256 != expected_sha256:
            result.error = f"SHA-256 mismatch: got {result.sha256}"
            result.hash_mismatch = True
        else:
            result.ok = True
    return result


async def upload(
    proxy: tuple[str, int],
    url: str,
    *,
    creds: Credentials | None,
    block: bytes,
    count: int,
    expected_sha256: str,
    timeout: float = 600.0,
    flowing: asyncio.Event | None = None,
) -> FetchResult:
    """POST `count` copies of `block` to the target's ``/upload``, which answers with the
    SHA-256 (hex) of the body it received: ok only when that is `expected_sha256`. `size` is
    the bytes sent, `ttfb` the first byte of the answer (after the whole body), `flowing` is
    set once FLOWING_BYTES are handed to the SOCKS connection. Never raises (except
    cancellation)."""
    length = len(block) * count
    result = FetchResult(url, expected_size=length, expected_sha256=expected_sha256)
    result.start = t0 = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    answer = bytearray()
    try:
        async with asyncio.timeout(timeout):
            host, port, path = split_url(url)
            reader, writer = await socks_connect(proxy, host, port, creds)
            result.connected = time.perf_counter() - t0
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: puretor-bench\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
            )
            for _ in range(count):
                writer.write(block)
                await writer.drain()
                result.size += len(block)
                if flowing is not None and result.size >= FLOWING_BYTES:
                    flowing.set()
            while chunk := await reader.read(READ_SIZE):  # the target closes after answering
                if not answer:
                    result.ttfb = time.perf_counter() - t0
                answer += chunk
                if len(answer) > 65536:
                    raise ConnectionError("response too long")
            result.total = time.perf_counter() - t0
    except SocksError as exc:
        result.error = str(exc)
        result.socks_code = exc.code
    except TimeoutError:
        result.error = f"timed out after {timeout:.0f}s"
    except (OSError, ConnectionError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)
    if not result.error:
        head, _, body = bytes(answer).partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split()
        result.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        result.sha256 = body.decode("latin-1").strip()
        if not answer:
            result.error = "connection closed before any response"
        elif result.status != 200:
            result.error = f"HTTP status {result.status}"
        elif result.sha256 != expected_sha256:
            result.error = f"the target received a body with SHA-256 {result.sha256[:64]!r}"
            result.hash_mismatch = True
        else:
            result.ok = True
    return result


async def fetch_many(
    proxy: tuple[str, int],
    url: str,
    creds: list[Credentials | None],
    *,
    expected_sha256: str,
    expected_size: int,
    timeout: float,
) -> tuple[list[FetchResult], float]:
    """One concurrent fetch per entry of `creds`, all started together.

    Returns the results and the wall time from the first start to the last byte."""
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(
            fetch(
                proxy,
                url,
                creds=c,
                expected_sha256=expected_sha256,
                expected_size=expected_size,
                timeout=timeout,
            )
            for c in creds
        )
    )
    return list(results), time.perf_counter() - t0
