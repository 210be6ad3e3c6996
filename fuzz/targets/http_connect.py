"""HTTP CONNECT request parser of HTTPTunnelPort (`puretor.proto.httpconnect`).

Input: ``chunking(1) stream...``: client bytes fed in pieces.  The parser must never
raise on client bytes.  Checked besides: a request and an error never coexist, an error
always has a reason, a CONNECT request has a host of at most 255 characters and a port
in 0..65535 (0: none given), the isolation properties work on any request, and after OPTIONS the
parser reads the next request from what is left.
"""

from __future__ import annotations

from fuzz.harness import Target, check, split_chunks
from puretor.proto.httpconnect import MAX_ADDRESS, HttpConnectParser


def one_input(data: bytes) -> None:
    if not data:
        return
    parser = HttpConnectParser()
    for chunk in split_chunks(data[1:], data[0]):
        parser.receive_data(chunk)
        check(not (parser.error and parser.request), "both an error and a request")
        for _ in range(8):  # OPTIONS requests one after another
            req = parser.request
            if req is None or req.method != "OPTIONS":
                break
            parser.reset()
    req = parser.request
    if req is None:
        return
    _ = (req.isolation_username, req.isolation_password)
    if req.method == "CONNECT":
        check(0 <= req.port <= 65535, f"port {req.port}")
        check(0 < len(req.host) <= MAX_ADDRESS, f"host {req.host!r}")


def seeds() -> list[bytes]:
    streams = [
        b"CONNECT target.test:443 HTTP/1.1\r\nHost: target.test:443\r\n\r\nearly",
        b"CONNECT [2001:db8::1]:80 HTTP/1.0\r\nTor-Stream-Isolation: a\r\n\r\n",
        b"CONNECT x.onion:80 HTTP/1.1\r\nProxy-Authorization: Basic dG9yOnNlY3JldA==\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\nCONNECT a.test:1 HTTP/1.1\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"CONNECT a.test:80 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"CONNECT a.test:80 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"CONNECT a.test:80 HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n",
    ]
    return [bytes((chunking,)) + s for chunking in (0, 1, 7) for s in streams]


TARGET = Target(
    name="http_connect",
    one_input=one_input,
    seeds=seeds,
    max_len=4096,
    doc=__doc__ or "",
)
