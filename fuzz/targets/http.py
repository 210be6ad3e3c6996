"""The directory HTTP response parser (`puretor.dir.http.HttpResponseParser`, `decompress`).

Input: ``chunking(1) flags(1) response``.  The response is fed in pieces the
chunking byte decides, then ``finish()`` ends the stream.  Flag bit 0 lowers
``max_body`` to 64 KiB so the decompression caps are reached; bit 1 instead runs
the whole response through ``decompress`` with an encoding chosen by bits 2-4.
Only ``RemoteProtocolError`` and ``DirectoryError`` may escape.  Checked
besides: the header buffer never exceeds ``MAX_HEADER`` and a body never
exceeds ``max_body``.
"""

from __future__ import annotations

import gzip
import lzma
import zlib

from fuzz.harness import Target, check, split_chunks
from fuzz.seeds import all_documents
from puretor.dir.http import MAX_HEADER, HttpResponseParser, decompress
from puretor.errors import DirectoryError, RemoteProtocolError

ENCODINGS = ("identity", "deflate", "gzip", "x-tor-lzma", "x-zstd", "x-gzip", "br", "")
SMALL_BODY = 64 * 1024
BIG_BODY = 1024 * 1024


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    chunking, flags, stream = data[0], data[1], data[2:]
    max_body = SMALL_BODY if flags & 1 else BIG_BODY
    try:
        if flags & 2:
            body = decompress(stream, ENCODINGS[(flags >> 2) % len(ENCODINGS)], max_body=max_body)
            check(len(body) <= max_body, f"decompress gave {len(body)} > {max_body} bytes")
            return
        parser = HttpResponseParser(max_body=max_body)
        for chunk in split_chunks(stream, chunking):
            parser.feed(chunk)
            check(len(parser._buf) <= MAX_HEADER, f"parser buffers {len(parser._buf)} bytes")
        response = parser.finish()
    except (RemoteProtocolError, DirectoryError):
        return
    check(len(response.body) <= max_body, f"body of {len(response.body)} > {max_body} bytes")
    check(response.status >= 0, "negative status")


def _response(body: bytes, encoding: str | None, extra: str = "") -> bytes:
    head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
    if encoding:
        head += f"Content-Encoding: {encoding}\r\n"
    return (head + extra + "\r\n").encode() + body


def seeds() -> list[bytes]:
    docs = [d for d in all_documents() if len(d) < 16384][:12]
    docs.append(b"x" * 1000)
    out = []
    for doc in docs:
        responses = [
            _response(doc, None, f"Content-Length: {len(doc)}\r\n"),
            _response(zlib.compress(doc), "deflate"),
            _response(zlib.compress(doc[:100]) + zlib.compress(doc[100:]), "deflate"),
            _response(gzip.compress(doc), "gzip"),
            _response(lzma.compress(doc, format=lzma.FORMAT_ALONE), "x-tor-lzma"),
            _response(zlib.compress(doc), None),  # sniffed, as C tor does
        ]
        out += [bytes((chunking, 0)) + r for r in responses for chunking in (0, 3)]
        out.append(bytes((0, 2 | 1 << 2)) + zlib.compress(doc))
    out.append(b"\x00\x00HTTP/1.0 404 Not found\r\n\r\n")
    out.append(b"\x00\x01HTTP/1.0 200 OK\n\n" + zlib.compress(bytes(200_000)))  # a small bomb
    return out


TARGET = Target(
    name="http",
    one_input=one_input,
    seeds=seeds,
    max_len=65536,
    dictionary=(
        b"HTTP/1.0 200 OK\r\n",
        b"\r\n\r\n",
        b"Content-Encoding: ",
        b"Content-Length: ",
        b"deflate",
        b"gzip",
        b"x-tor-lzma",
        b"x-zstd",
        b"identity",
        b"\x1f\x8b",
        b"\x78\x9c",
        b"\x5d\x00\x00",
        b"\x28\xb5\x2f\xfd",
    ),
    doc=__doc__ or "",
)
