"""SOCKS4/4a/5 server handshake (`puretor.proto.socks.SocksHandshake`).

Input: ``flags(1) chunking(1) stream...``.  ``flags`` picks the port options
(ExtendedErrors, PreferSOCKSNoAuth); the stream is fed in pieces that the
``chunking`` byte decides.  The handshake must never raise on client bytes: bad
input sets ``.error``.  Checked besides: the buffer stays within
``MAX_HANDSHAKE_BUFFER``, a request and an error never coexist, a finished
request is well formed and every reply method works on it.
"""

from __future__ import annotations

import ipaddress
import struct

from fuzz.harness import Target, check, split_chunks
from puretor.proto.socks import (
    MAX_HANDSHAKE_BUFFER,
    SocksCommand,
    SocksHandshake,
    SocksReply,
)


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, chunking = data[0], data[1]
    hs = SocksHandshake(extended_errors=bool(flags & 1), prefer_no_auth=bool(flags & 2))
    for chunk in split_chunks(data[2:], chunking):
        hs.receive_data(chunk)
        hs.data_to_send()
        check(
            hs.buffered <= MAX_HANDSHAKE_BUFFER,
            f"buffered {hs.buffered} > MAX_HANDSHAKE_BUFFER",
        )
        check(not (hs.error and hs.request), "both an error and a request")
    req = hs.request
    if req is None:
        return
    check(0 <= req.port <= 65535, f"port {req.port}")
    check(bool(req.host) and req.host.isascii(), f"host {req.host!r}")
    if req.address_type != "hostname":
        ipaddress.ip_address(req.host)  # must be a real address
    else:
        check(len(req.host) <= 255, "hostname longer than 255")
    # The server's replies must work for whatever request got through.
    which = flags >> 2
    if which % 3 == 0:
        hs.reply_connected()
    elif which % 3 == 1:
        hs.reply_error(SocksReply.HOST_UNREACHABLE + (which % 8))
    elif req.command is SocksCommand.RESOLVE_PTR:
        hs.reply_resolved(b"example.com", 60)
    else:
        hs.reply_resolved("10.1.2.3", 60)
    check(hs.reply_connected() == b"", "a second reply was not dropped")


# -- seeds ------------------------------------------------------------------------


def _s5_request(cmd: int, atyp: int, addr: bytes, port: int) -> bytes:
    if atyp == 3:
        addr = bytes((len(addr),)) + addr
    return bytes((5, cmd, 0, atyp)) + addr + struct.pack("!H", port)


def seeds() -> list[bytes]:
    noauth = b"\x05\x01\x00"
    userpass = b"\x05\x02\x00\x02" + b"\x01\x04user\x04pass"
    streams = [
        noauth + _s5_request(1, 3, b"example.com", 443) + b"GET / HTTP/1.1\r\n\r\n",
        noauth + _s5_request(1, 1, bytes((93, 184, 216, 34)), 80),
        noauth + _s5_request(1, 4, ipaddress.IPv6Address("2001:db8::1").packed, 80),
        noauth + _s5_request(0xF0, 3, b"torproject.org", 0),
        noauth + _s5_request(0xF1, 1, bytes((1, 1, 1, 1)), 0),
        noauth + b"\x01\x00\x00" + _s5_request(1, 3, b"a.onion", 80),
        userpass + _s5_request(1, 3, b"[::1]", 22),
        b"\x05\x02\x00\x02" + b"\x01\x09<torS0X>0\x03iso" + _s5_request(1, 3, b"x.org", 1),
        b"\x04\x01\x00\x50" + bytes((10, 0, 0, 1)) + b"userid\x00",
        b"\x04\x01\x01\xbb" + bytes((0, 0, 0, 1)) + b"\x00example.org\x00optimistic",
        b"\x04\xf0\x00\x00" + bytes((0, 0, 0, 9)) + b"u\x00host.example\x00",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
    ]
    out = []
    for flags in (0, 1, 2, 4, 8):
        for chunking in (0, 1, 7):
            out += [bytes((flags, chunking)) + s for s in streams]
    return out


TARGET = Target(
    name="socks",
    one_input=one_input,
    seeds=seeds,
    max_len=2048,
    doc=__doc__ or "",
)
