"""The DNSPort's DNS codec: queries as stub resolvers send them, hostile packets refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.proto.dnsmsg import (
    DnsFormatError,
    Question,
    Rcode,
    Rtype,
    build_response,
    format_error,
    parse_query,
)


def query(name: str, qtype: int = Rtype.A, *, ident: int = 0x1234, extra: bytes = b"") -> bytes:
    labels = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".") if p) + b"\0"
    arcount = 1 if extra else 0
    return (
        struct.pack("!HHHHHH", ident, 0x0120, 1, 0, 0, arcount)
        + labels
        + struct.pack("!HH", qtype, 1)
        + extra
    )


# dig's EDNS OPT pseudo-record (UDP size 1232, a cookie): additional data we must skip.
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c\x00\x0a\x00\x08" + b"\x01" * 8


def test_dig_style_query_with_edns_is_read() -> None:
    q = parse_query(query("target.test", Rtype.AAAA, extra=OPT))
    assert q.id == 0x1234 and q.opcode == 0 and q.recursion_desired
    assert q.questions == [Question("target.test", Rtype.AAAA, 1)]


def test_answer_round_trips_through_our_reading() -> None:
    q = parse_query(query("target.test"))
    reply = build_response(q, answers=[(Rtype.A, "198.18.0.10", 300)])
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    assert (ident, qd, an, ns, ar) == (0x1234, 1, 1, 0, 0)
    assert flags & 0x8000 and flags & 0x0080 and flags & 0x0100 and flags & 0xF == 0
    assert reply.endswith(struct.pack("!HHIH", 1, 1, 300, 4) + bytes([198, 18, 0, 10]))
    ptr = build_response(q, answers=[(Rtype.PTR, "host.example", 60)])
    assert ptr.endswith(b"\x04host\x07example\x00")


@pytest.mark.parametrize(
    ("rcode", "name"), [(Rcode.NXDOMAIN, "nx"), (Rcode.NOTIMP, "notimp"), (Rcode.REFUSED, "r")]
)
def test_error_responses_echo_the_question(rcode: int, name: str) -> None:
    q = parse_query(query("a.test", Rtype.MX))
    reply = build_response(q, rcode=rcode)
    assert struct.unpack_from("!HH", reply, 2)[0] & 0xF == rcode
    assert struct.unpack_from("!H", reply, 4)[0] == 1 and b"\x01a\x04test\x00" in reply


def test_compression_pointers_read_and_loops_refused() -> None:
    head = struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0)
    first = b"\x04test\x00" + struct.pack("!HH", 1, 1)
    second = b"\x01a\xc0\x0c" + struct.pack("!HH", 28, 1)  # a. + pointer to "test"
    q = parse_query(head + first + second)
    assert [x.name for x in q.questions] == ["test", "a.test"]
    loop = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\0\1\0\1"
    with pytest.raises(DnsFormatError):
        parse_query(loop)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x12\x34",
        struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\0\0\1\0\1",  # a response
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x05ab",  # label past the end
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x03a.b\0\0\1\0\1",  # dot in label
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x03a\0b\0\0\1\0\1",  # NUL
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1",
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\0\0\1\0\1",
        struct.pack("!HHHHHH", 1, 0x0100, 500, 0, 0, 0),  # too many questions
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\0\0\1",  # truncated question
    ],
)
def test_hostile_packets_are_format_errors(packet: bytes) -> None:
    with pytest.raises(DnsFormatError):
        parse_query(packet)
    reply = format_error(packet)
    if len(packet) < 12 or packet[2] & 0x80:
        assert reply is None  # too short to answer, or a response: dropped
    else:
        assert reply is not None and reply[3] & 0xF == Rcode.FORMERR and reply[:2] == packet[:2]


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_raise_format_error(data: bytes) -> None:
    try:
        q = parse_query(data)
    except DnsFormatError:
        format_error(data)
        return
    for question in q.questions:
        assert len(question.name) <= 255
        build_response(q, question=question, rcode=Rcode.NXDOMAIN)


@settings(max_examples=200)
@given(
    st.lists(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=5),
    st.sampled_from([Rtype.A, Rtype.AAAA, Rtype.PTR, Rtype.MX]),
    st.integers(0, 0xFFFF),
)
def test_names_round_trip(labels: list[str], qtype: int, ident: int) -> None:
    name = ".".join(labels)
    q = parse_query(query(name, qtype, ident=ident))
    assert q.questions == [Question(name, qtype, 1)] and q.id == ident
    # The response echoes the question byte for byte.
    assert build_response(q)[12:] == query(name, qtype)[12:]
