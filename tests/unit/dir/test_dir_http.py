"""HTTP/1.0 requests and the incremental response parser with decompression."""

from __future__ import annotations

import contextlib
import gzip
import lzma
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.dir.http import HttpResponseParser, build_request, decompress
from puretor.errors import DirectoryError, RemoteProtocolError, TorError

HEAD = b"HTTP/1.0 200 OK\r\nDate: Tue, 01 Jan 2025 00:00:00 GMT\r\nContent-Type: text/plain\r\n"


def response(body: bytes, encoding: str | None) -> bytes:
    head = HEAD + (f"Content-Encoding: {encoding}\r\n".encode() if encoding else b"")
    return head + b"\r\n" + body


def parse(data: bytes, chunk: int = 0, **kw: int) -> tuple[int, bytes, str]:
    p = HttpResponseParser(**kw)
    if chunk:
        for i in range(0, len(data), chunk):
            p.feed(data[i : i + chunk])
    else:
        p.feed(data)
    r = p.finish()
    return r.status, r.body, r.content_encoding


def test_build_request() -> None:
    assert build_request("/tor/micro/d/abc-def") == (
        b"GET /tor/micro/d/abc-def HTTP/1.0\r\nAccept-Encoding: deflate, identity\r\n\r\n"
    )
    req = build_request(
        "/tor/keys/fp/AB",
        accept_encodings=("deflate", "identity", "x-tor-lzma", "gzip"),
        host="1.2.3.4",
        headers={"X-Or-Diff-From-Consensus": "AA"},
    )
    assert b"Host: 1.2.3.4\r\n" in req and b"x-tor-lzma, gzip" in req
    assert req.endswith(b"X-Or-Diff-From-Consensus: AA\r\n\r\n")
    for bad in ("no-slash", "/a b", "/a\r\nX: y"):
        with pytest.raises(ValueError):
            build_request(bad)


DOC = b"network-status-version 3 microdesc\n" * 200


@pytest.mark.parametrize("chunk", [0, 1, 7, 1000])
def test_identity_and_deflate(chunk: int) -> None:
    assert parse(response(DOC, None), chunk) == (200, DOC, "identity")
    assert parse(response(DOC, "identity"), chunk)[1] == DOC
    assert parse(response(zlib.compress(DOC), "deflate"), chunk) == (200, DOC, "deflate")


@pytest.mark.parametrize("chunk", [0, 3, 64])
def test_concatenated_deflate_streams(chunk: int) -> None:
    # C tor may send each document as its own zlib stream (spec-map §0.3):
    # zlib.decompress() would silently stop after the first.
    parts = [b"onion-key\nntor-onion-key %d\n" % i * 10 for i in range(5)]
    body = b"".join(zlib.compress(p) for p in parts)
    assert zlib.decompress(body) == parts[0]
    assert parse(response(body, "deflate"), chunk)[1] == b"".join(parts)


def test_gzip_and_lzma() -> None:
    assert parse(response(gzip.compress(DOC) + gzip.compress(b"x\n"), "gzip"))[1] == DOC + b"x\n"
    alone = lzma.compress(DOC, format=lzma.FORMAT_ALONE)
    assert parse(response(alone, "x-tor-lzma"), 5)[1] == DOC
    assert parse(response(lzma.compress(DOC), "x-tor-lzma"))[1] == DOC  # .xz via FORMAT_AUTO


def test_mislabelled_body_is_sniffed_like_c_tor() -> None:
    assert parse(response(zlib.compress(DOC), None), 1) == (200, DOC, "deflate")
    assert parse(response(gzip.compress(DOC), "identity"))[2] == "gzip"
    assert parse(response(b"ab", None)) == (200, b"ab", "identity")  # too short to sniff
    assert parse(response(b"", None))[1] == b""


def test_headers_and_status() -> None:
    p = HttpResponseParser()
    p.feed(b"HTTP/1.0 404 Not found\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    r = p.finish()
    assert (r.status, r.reason, r.headers["x-a"], r.body) == (404, "Not found", "1, 2", b"")
    p = HttpResponseParser()
    p.feed(b"HTTP/1.0 503 Directory busy, try again later\n\n")  # bare LFs tolerated
    assert p.status == 503


def test_content_length() -> None:
    head = b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n"
    assert parse(head + b"0123456789")[1] == b"0123456789"
    with pytest.raises(RemoteProtocolError, match="truncated HTTP body: 4 of 10"):
        parse(head + b"0123")


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"HTTP/1.0 200", RemoteProtocolError, "before the HTTP headers"),
        (b"SMTP 200 OK\r\n\r\n", RemoteProtocolError, "bad HTTP status line"),
        (b"HTTP/1.0 200 OK\r\nnocolon\r\n\r\n", RemoteProtocolError, "bad HTTP header"),
        (response(zlib.compress(DOC)[:-5], "deflate"), RemoteProtocolError, "truncated deflate"),
        (response(b"\x78\x9cgarbage!", "deflate"), RemoteProtocolError, "corrupt deflate"),
        (response(b"abc", "br"), RemoteProtocolError, "unsupported Content-Encoding 'br'"),
        (response(zlib.compress(DOC) + b"\n", "deflate"), RemoteProtocolError, "truncated"),
    ],
)
def test_errors(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse(data)


def test_size_caps() -> None:
    bomb = zlib.compress(b"\0" * 10_000_000, 9)
    assert len(bomb) < 20_000
    with pytest.raises(DirectoryError, match="decompresses to more than 1000000 bytes"):
        parse(response(bomb, "deflate"), 4096, max_body=1_000_000)
    with pytest.raises(DirectoryError, match="larger than 100 bytes"):
        parse(response(b"x" * 101, None), max_body=100)
    assert parse(response(b"x" * 100, None), max_body=100)[1] == b"x" * 100
    with pytest.raises(RemoteProtocolError, match="headers too long"):
        HttpResponseParser().feed(b"HTTP/1.0 200 OK\r\n" + b"X: y\r\n" * 20000)
    with pytest.raises(DirectoryError):
        decompress(bomb, "deflate", max_body=1000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["deflate", "gzip", "x-tor-lzma", "identity"]))
def test_fuzz_only_tor_errors_escape(body: bytes, encoding: str) -> None:
    for data in (response(body, encoding), body):
        with contextlib.suppress(TorError):
            parse(data, 7, max_body=10_000)
