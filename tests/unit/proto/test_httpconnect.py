"""The HTTP CONNECT parser and replies (HTTPTunnelPort), against C tor 0.4.9's behaviour."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.proto.httpconnect import (
    MAX_HEAD,
    NOT_A_PROXY_BODY,
    HttpConnectParser,
    connect_failed,
    connect_ok,
    options_reply,
    status_for_end_reason,
)

BAD_REQUEST = (
    b"HTTP/1.0 400 Bad Request\r\nTor-Capabilities: \r\nVia: tor/1.0 tor-network (pt)\r\n\r\n"
)
URI_TOO_LONG = b"HTTP/1.0 414 Request-URI Too Long\r\nTor-Capabilities: \r\nVia: tor/1.0 tor-network (pt)\r\n\r\n"
NOT_A_PROXY = (
    b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
    b"Tor-Capabilities: \r\nServer: tor/1.0 (pt)\r\n\r\n" + NOT_A_PROXY_BODY
)


def parse(data: bytes, chunk: int = 0) -> HttpConnectParser:
    p = HttpConnectParser(via="pt")
    if chunk:
        for i in range(0, len(data), chunk):
            p.receive_data(data[i : i + chunk])
    else:
        p.receive_data(data)
    return p


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_connect_request_is_read_whole_or_byte_by_byte(chunk: int) -> None:
    p = parse(b"CONNECT target.test:443 HTTP/1.1\r\nHost: target.test:443\r\n\r\nEARLY", chunk)
    assert p.error is None and p.request is not None
    assert (p.request.method, p.request.host, p.request.port) == ("CONNECT", "target.test", 443)
    assert p.leftover == b"EARLY"  # optimistic data, sent once the stream is open


def test_a_missing_port_reads_as_zero_as_in_c_tor() -> None:
    # C tor then refuses the stream as a protocol violation (the listener's job).
    for head in (
        b"CONNECT target.test HTTP/1.0\r\n\r\n",
        b"CONNECT target.test:0 HTTP/1.0\r\n\r\n",
    ):
        r = parse(head).request
        assert r is not None and (r.host, r.port) == ("target.test", 0)


def test_ipv6_and_onion_targets() -> None:
    r = parse(b"CONNECT [2001:db8::1]:80 HTTP/1.0\r\n\r\n").request
    assert r is not None and (r.host, r.port) == ("2001:db8::1", 80)
    onion = "a" * 56 + ".onion"
    r = parse(f"connect {onion}:80 HTTP/1.0\r\n\r\n".encode()).request
    assert r is not None and r.host == onion  # method case-insensitive, as C tor's strcasecmp


@pytest.mark.parametrize(
    ("head", "reply"),
    [
        (b"CONNECT target.test:65536 HTTP/1.0", BAD_REQUEST),
        (b"CONNECT 2001:db8::1:80 HTTP/1.0", BAD_REQUEST),  # IPv6 needs brackets
        (b"CONNECT " + b"a" * 300 + b":80 HTTP/1.0", URI_TOO_LONG),
        (b"CONNECT target.test:80", BAD_REQUEST),  # no version
        (b"CONNECT target.test:80 HTTP/2.0", BAD_REQUEST),
        (b"CONNECT  target.test:80 HTTP/1.0", BAD_REQUEST),
        (b"GET http://target.test/ HTTP/1.1\r\nHost: localhost", NOT_A_PROXY),
        (b"POST / HTTP/1.0\r\nHost: [::1]:9080", NOT_A_PROXY),
        # request smuggling shapes
        (b"CONNECT t.test:80 HTTP/1.1\r\nContent-Length: 5", BAD_REQUEST),
        (b"CONNECT t.test:80 HTTP/1.1\r\nTransfer-Encoding: chunked", BAD_REQUEST),
        (b"CONNECT t.test:80 HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0", BAD_REQUEST),
        (b"CONNECT t.test:80 HTTP/1.1\r\nX-A: 1\r\n folded", BAD_REQUEST),
        (b"CONNECT t.test:80 HTTP/1.1\r\nX-A : 1", BAD_REQUEST),
        (b"CONNECT t.test:80 HTTP/1.1\r\nX-A: 1\nX-B: 2", BAD_REQUEST),
        (b"CONNECT t.test:80 HTTP/1.1\r\nX-A: \x001", BAD_REQUEST),
        (b"CONNECT t.test:80 HTTP/1.1\r\nX-A: \xff", BAD_REQUEST),
        (
            b"CONNECT t.test:80 HTTP/1.1\r\nTor-Stream-Isolation: a\r\nTor-Stream-Isolation: b",
            BAD_REQUEST,
        ),
    ],
)
def test_bad_requests_get_c_tors_replies(head: bytes, reply: bytes) -> None:
    p = parse(head + b"\r\n\r\n")
    assert p.request is None and p.error is not None
    assert p.error_reply == reply


def test_foreign_host_on_a_non_connect_request_gets_no_reply_at_all() -> None:
    # DNS rebinding: a web page must learn nothing about the port (proposal 365); C tor
    # 0.4.9 closes silently without a Host header too.
    p = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert p.error is not None and p.error_reply == b""
    p = parse(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert p.error is not None and p.error_reply == b""
    p = parse(b"OPTIONS * HTTP/1.1\r\nHost: evil.example:80\r\n\r\n")
    assert p.error is not None and p.error_reply == b""


def test_oversized_head_is_refused_without_waiting_for_its_end() -> None:
    p = parse(b"CONNECT t.test:80 HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD)
    assert p.error == "request head too long" and p.error_reply == BAD_REQUEST


def test_options_then_connect_on_one_connection() -> None:
    p = parse(
        b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1:9080\r\n\r\nCONNECT t.test:80 HTTP/1.1\r\n\r\n"
    )
    assert p.request is not None and p.request.method == "OPTIONS"
    p.reset()
    assert p.request is not None and p.request.method == "CONNECT"
    reply = options_reply("puretor 1")
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n") and b"\r\nAllow: OPTIONS, CONNECT\r\n" in reply
    assert b"\r\nTor-Capabilities: \r\n" in reply and b"Server: tor/1.0 (puretor 1)" in reply


def test_rpc_target_is_not_supported() -> None:
    p = parse(b"CONNECT t.test:80 HTTP/1.1\r\nTor-RPC-Target: x\r\n\r\n")
    assert p.error_reply.startswith(b"HTTP/1.0 501 Not implemented (No RPC Support)\r\n")


def test_isolation_headers_as_c_tor_reads_them() -> None:
    def req(*headers: str) -> tuple[bytes | None, bytes | None]:
        head = "CONNECT t.test:80 HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
        r = parse(head.encode()).request
        assert r is not None
        return r.isolation_username, r.isolation_password

    assert req() == (None, None)
    assert req("Tor-Stream-Isolation: a") != req("Tor-Stream-Isolation: b")
    assert req("Tor-Stream-Isolation: a") == req("tor-stream-isolation:  a")
    assert req("X-Tor-Stream-Isolation: a") != req("Tor-Stream-Isolation: a")
    modern = base64.b64encode(b"tor:secret").decode()
    assert req(f"Proxy-Authorization: Basic {modern}")[0] == b"tor:secret"
    assert req("Proxy-Authorization: Bearer xyz")[0] == b"Bearer xyz"  # legacy: as sent


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (1, "500 "),
        (2, "503 Service Unavailable (resolve failed)"),  # 0.4.9: was 404
        (3, "403 Forbidden (connection refused)"),
        (4, "403 Forbidden (exit policy)"),
        (7, "504 Gateway Timeout"),
        (8, "503 Service Unavailable (no route)"),
        (12, "403 Forbidden (connection reset)"),
        (200, "500 Internal Server Error (weird end reason)"),
    ],
)
def test_end_reasons_map_to_c_tors_statuses(reason: int, status: str) -> None:
    assert status_for_end_reason(reason).startswith(status)
    reply = connect_failed(reason, "puretor 1")
    assert reply.startswith(f"HTTP/1.0 {status}".encode())
    assert b"\r\nTor-Request-Failed: end/" in reply and reply.endswith(b"\r\n\r\n")


def test_success_reply() -> None:
    reply = connect_ok("puretor 1")
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n") and reply.endswith(b"\r\n\r\n")
    assert b"Via: tor/1.0 tor-network (puretor 1)\r\n" in reply


@settings(max_examples=400)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_raise(data: bytes, chunk: int) -> None:
    p = parse(data, chunk)
    assert p.request is None or p.error is None
    if p.request is not None and p.request.method == "CONNECT":
        assert 0 <= p.request.port <= 65535 and p.request.host


@settings(max_examples=200)
@given(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.integers(min_value=1, max_value=65535),
    st.dictionaries(
        st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
        st.from_regex(r"[ -~]{0,40}", fullmatch=True).map(str.strip),
        max_size=5,
    ),
)
def test_well_formed_requests_round_trip(host: str, port: int, headers: dict[str, str]) -> None:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    p = parse(f"CONNECT {host}:{port} HTTP/1.1\r\n{lines}\r\n".encode())
    if len({k.lower() for k in headers}) == len(headers):
        assert p.request is not None, p.error
        assert (p.request.host, p.request.port) == (host, port)
