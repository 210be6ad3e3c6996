"""HTTP/1.0 as spoken to directory caches over a BEGIN_DIR stream (dir-spec §6, App. B).

`build_request` makes a ``GET`` request; `HttpResponseParser` takes the bytes
of the stream as they arrive (`feed`) and, when the relay closes the stream
(RELAY_END), `finish` returns the `HttpResponse` with its body already
decompressed.

Compression (spec-map §0.3, §5.2): ``deflate`` is the *zlib* format, and a
body may be several concatenated streams, so decoding loops over
``unused_data``; ``gzip`` likewise; ``x-tor-lzma`` is the legacy ``.lzma``
("alone") format; ``x-zstd`` only with ``backports.zstd`` installed.  As C tor does
(dirclient.c, detect_compression_method), a body labelled ``identity`` that
starts with a compression magic number is decoded anyway.

Decompressed output is capped (``max_body``) while decoding, so a small
compressed "bomb" cannot exhaust memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from puretor.errors import DirectoryError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_BODY",
    "HttpResponse",
    "HttpResponseParser",
    "build_request",
    "decompress",
]

DEFAULT_MAX_BODY = 32 * 1024 * 1024  # a live microdesc consensus is ~3 MB, all microdescs ~4 MB
MAX_HEADER = 64 * 1024


def build_request(
    path: str,
    *,
    accept_encodings: Iterable[str] = ("deflate", "identity"),
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """``GET path HTTP/1.0`` with Accept-Encoding (C tor joins the methods with ", ").

    Advertise only deflate/identity on anonymous (multi-hop) requests (spec-map §5.2).
    """
    if not path.startswith("/") or any(c.isspace() for c in path) or not path.isascii():
        raise ValueError(f"bad request path {path!r}")
    lines = [f"GET {path} HTTP/1.0"]
    if host:
        lines.append(f"Host: {host}")
    encodings = ", ".join(accept_encodings)
    if encodings:
        lines.append(f"Accept-Encoding: {encodings}")
    for name, value in (headers or {}).items():
        if any(c in name + value for c in "\r\n") or ":" in name:
            raise ValueError(f"bad header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes  # decompressed
    content_encoding: str  # as decoded ("identity" if none)


class _Decoder(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _Streams:
    """Concatenated zlib/gzip/lzma/zstd streams, with output capped at ``limit`` bytes."""

    def __init__(
        self, name: str, factory: Any, limit: int, errors: tuple[type[Exception], ...] = ()
    ) -> None:
        self._name = name
        self._factory = factory
        self._corrupt: tuple[type[Exception], ...] = (zlib.error, EOFError, ValueError, *errors)
        self._obj = factory()
        self._limit = limit
        self._out = 0
        self._started = False  # have we seen any input for the current stream?

    def _cap(self) -> int:
        return self._limit - self._out + 1

    def feed(self, data: bytes) -> bytes:
        parts: list[bytes] = []
        while data:
            self._started = True
            try:
                chunk = self._obj.decompress(data, self._cap())
            except self._corrupt as e:
                raise RemoteProtocolError(f"corrupt {self._name} body: {e}") from None
            self._out += len(chunk)
            if self._out > self._limit:
                raise DirectoryError(
                    f"directory response decompresses to more than {self._limit} bytes; refused"
                )
            parts.append(chunk)
            if self._obj.eof:  # end of one stream: the rest may be another one
                data = self._obj.unused_data
                self._obj = self._factory()
                self._started = False
            else:
                data = b""
        return b"".join(parts)

    def finish(self) -> bytes:
        if self._started and not self._obj.eof:
            raise RemoteProtocolError(f"truncated {self._name} body")
        return b""


def _zstd_factory() -> Any:
    """A stdlib-style zstd decompressor class, if one is installed (3.14's
    ``compression.zstd`` or its backport), else None."""
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            return None
    return zstd.ZstdDecompressor


def _decoder(encoding: str, limit: int) -> _Decoder:
    if encoding in ("identity", ""):
        return _Identity()
    if encoding in ("deflate", "x-deflate"):
        return _Streams("deflate", zlib.decompressobj, limit)
    if encoding in ("gzip", "x-gzip"):
        return _Streams("gzip", lambda: zlib.decompressobj(wbits=31), limit)
    if encoding == "x-tor-lzma":
        import lzma  # only here: we never ask for it, and the module costs memory

        return _Streams(
            "x-tor-lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_AUTO), limit, (lzma.LZMAError,)
        )
    if encoding == "x-zstd":
        factory = _zstd_factory()
        if factory is not None:
            return _Streams("x-zstd", factory, limit)
        raise RemoteProtocolError("x-zstd body, but no zstd module is installed")
    raise RemoteProtocolError(f"unsupported Content-Encoding {encoding!r}")


def _sniff(prefix: bytes) -> str:
    """C tor's detect_compression_method."""
    if prefix[:2] == b"\x1f\x8b":
        return "gzip"
    if len(prefix) >= 2 and prefix[0] & 0x0F == 8 and int.from_bytes(prefix[:2], "big") % 31 == 0:
        return "deflate"
    if prefix[:3] == b"\x5d\x00\x00":
        return "x-tor-lzma"
    if prefix[:4] == b"\x28\xb5\x2f\xfd":
        return "x-zstd"
    return "identity"


def decompress(body: bytes, encoding: str, *, max_body: int = DEFAULT_MAX_BODY) -> bytes:
    """Decode a whole body (concatenated streams allowed)."""
    d = _decoder(encoding, max_body)
    out = d.feed(body) + d.finish()
    if len(out) > max_body:
        raise DirectoryError(f"directory response larger than {max_body} bytes; refused")
    return out


class HttpResponseParser:
    """Incremental parser of one HTTP/1.0 response; the body ends when the stream ends."""

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._head: tuple[int, str, dict[str, str]] | None = None
        self._encoding = "identity"
        self._decoder: _Decoder | None = None
        self._sniffed = False
        self._parts: list[bytes] = []
        self._size = 0  # decoded bytes so far
        self._raw = 0  # body bytes received
        self._length: int | None = None  # Content-Length, if sent

    @property
    def status(self) -> int | None:
        return self._head[0] if self._head else None

    def feed(self, data: bytes) -> None:
        if self._head is None:
            self._buf += data
            end, sep = self._buf.find(b"\r\n\r\n"), 4
            lf = self._buf.find(b"\n\n")
            if lf != -1 and (end == -1 or lf < end):
                end, sep = lf, 2
            if end == -1:
                if len(self._buf) > MAX_HEADER:
                    raise RemoteProtocolError("HTTP response headers too long")
                return
            self._head = self._parse_head(bytes(self._buf[:end]))
            data = bytes(self._buf[end + sep :])
            self._buf.clear()
        self._body(data)

    def _parse_head(self, head: bytes) -> tuple[int, str, dict[str, str]]:
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split(None, 2)
        if (
            len(parts) < 2
            or not parts[0].startswith("HTTP/1.")
            or not (parts[1].isascii() and parts[1].isdigit() and len(parts[1]) == 3)
        ):
            raise RemoteProtocolError(f"bad HTTP status line {lines[0][:80]!r}")
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise RemoteProtocolError(f"bad HTTP header line {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self._encoding = headers.get("content-encoding", "identity").strip().lower()
        if "content-length" in headers:
            length = headers["content-length"]
            if not (length.isascii() and length.isdigit() and len(length) <= 18):
                raise RemoteProtocolError(f"bad Content-Length {length!r}")
            self._length = int(length)
        return status, reason, headers

    def _body(self, data: bytes) -> None:
        if not data:
            return
        self._raw += len(data)
        if self._raw > self.max_body:
            raise DirectoryError(f"directory response larger than {self.max_body} bytes; refused")
        if self._decoder is None:
            encoding = self._encoding
            if encoding == "identity" and not self._sniffed:
                # Wait for a few bytes before guessing (C tor: detect_compression_method).
                self._buf += data
                if len(self._buf) < 4:
                    return
                data = bytes(self._buf)
                self._buf.clear()
                self._sniffed = True
                encoding = self._encoding = _sniff(data[:4])
            self._decoder = _decoder(encoding, self.max_body)
        self._emit(self._decoder.feed(data))

    def _emit(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.max_body:
            raise DirectoryError(f"directory response larger than {self.max_body} bytes; refused")
        if chunk:
            self._parts.append(chunk)

    def finish(self) -> HttpResponse:
        """The stream has ended: return the response or raise if it is incomplete."""
        if self._head is None:
            raise RemoteProtocolError("connection closed before the HTTP headers were complete")
        if self._buf and self._decoder is None:  # fewer than 4 body bytes: nothing to sniff
            self._decoder = _decoder(self._encoding, self.max_body)
            self._emit(self._decoder.feed(bytes(self._buf)))
            self._buf.clear()
        if self._length is not None and self._raw < self._length:
            raise RemoteProtocolError(
                f"truncated HTTP body: {self._raw} of {self._length} bytes (Content-Length)"
            )
        if self._decoder is not None:
            self._emit(self._decoder.finish())
        status, reason, headers = self._head
        return HttpResponse(status, reason, headers, b"".join(self._parts), self._encoding)
