"""The exits' DNS responder: packet encoding/decoding and a real UDP round trip on loopback."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puretor.testnet import dns

NAMES = {"target.test": "198.18.0.10", "www.target.test": "198.18.0.11"}


def test_encode_name() -> None:
    assert dns.encode_name("www.target.test") == b"\x03www\x06target\x04test\x00"
    assert dns.encode_name("target.test.") == b"\x06target\x04test\x00"
    with pytest.raises(ValueError):
        dns.encode_name("a..b")


def test_parse_query_round_trip() -> None:
    q = dns.parse_query(dns.encode_query(0x1234, "WwW.TaRgEt.TeSt"))
    assert q.ident == 0x1234
    assert q.question.name == "WwW.TaRgEt.TeSt"
    assert (q.question.qtype, q.question.qclass) == (dns.TYPE_A, dns.CLASS_IN)


def test_a_answer_is_case_insensitive_and_echoes_the_question() -> None:
    # Tor randomizes query case (DNS 0x20) and checks the echo byte for byte.
    query = dns.encode_query(7, "TARGET.test")
    reply = dns.respond(query, NAMES)
    assert reply is not None
    ident, rcode, addrs = dns.parse_response(reply)
    assert (ident, rcode, addrs) == (7, dns.RCODE_NOERROR, ["198.18.0.10"])
    assert reply[12 : 12 + len(query) - 12] == query[12:]
    flags = struct.unpack_from("!H", reply, 2)[0]
    assert flags & 0x8000 and flags & 0x0400 and flags & 0x0100  # QR, AA, RD echoed


def test_unknown_name_is_nxdomain() -> None:
    reply = dns.respond(dns.encode_query(9, "nope.target.test"), NAMES)
    assert reply is not None
    assert dns.parse_response(reply) == (9, dns.RCODE_NXDOMAIN, [])


def test_known_name_other_type_is_nodata() -> None:
    reply = dns.respond(dns.encode_query(9, "target.test", dns.TYPE_AAAA), NAMES)
    assert reply is not None
    assert dns.parse_response(reply) == (9, dns.RCODE_NOERROR, [])


def test_ptr_for_a_known_address() -> None:
    reply = dns.respond(dns.encode_query(3, "10.0.18.198.in-addr.arpa", dns.TYPE_PTR), NAMES)
    assert reply is not None
    _ident, rcode, _ = dns.parse_response(reply)
    assert rcode == dns.RCODE_NOERROR
    assert reply.endswith(dns.encode_name("target.test"))


def test_garbage_gets_formerr_or_nothing() -> None:
    assert dns.respond(b"\x00\x01", NAMES) is None  # not even a header
    reply = dns.respond(b"\xab\xcd\x01\x00\x00\x02" + b"\0" * 6, NAMES)  # two questions
    assert reply is not None
    assert reply[:2] == b"\xab\xcd" and reply[3] & 0xF == dns.RCODE_FORMERR
    response = dns.respond(dns.encode_query(1, "target.test"), NAMES)
    assert response is not None and dns.respond(response, NAMES) is None  # never answer answers


@given(st.binary(max_size=300))
def test_respond_never_raises(packet: bytes) -> None:
    dns.respond(packet, NAMES)


def test_udp_round_trip() -> None:
    server = dns.DnsServer("127.0.0.1", 0, NAMES)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(dns.encode_query(42, "www.target.test"), server.address)
            reply, _ = s.recvfrom(4096)
        assert dns.parse_response(reply) == (42, dns.RCODE_NOERROR, ["198.18.0.11"])
    finally:
        server.close()
