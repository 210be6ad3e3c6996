"""proto.socks: the SOCKS server handshake, fed whole, in chunks and byte by byte."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.proto.socks import (
    MAX_HANDSHAKE_BUFFER,
    SocksCommand,
    SocksHandshake,
    SocksReply,
    SocksRequest,
    downgrade_extended,
    socks5_reply_for_end_reason,
)

S5_ERR = {code: bytes((5, code, 0, 1)) + bytes(6) for code in range(256)}
S4_REJECT = b"\x00\x5b" + bytes(6)


def feed(data: bytes, chunk: int | None = None, **kwargs: bool) -> tuple[SocksHandshake, bytes]:
    """Feed ``data`` (all at once or ``chunk`` bytes at a time); return the handshake and output."""
    hs = SocksHandshake(**kwargs)
    out = b""
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        hs.receive_data(data[i : i + step])
        out += hs.data_to_send()
    return hs, out


def s5_request(cmd: int, atyp: int, addr: bytes, port: int) -> bytes:
    return bytes((5, cmd, 0, atyp)) + addr + struct.pack("!H", port)


def s5_host(cmd: int, host: bytes, port: int) -> bytes:
    return s5_request(cmd, 3, bytes((len(host),)) + host, port)


def userpass(user: bytes, password: bytes) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def s4(cmd: int, port: int, ip: int, userid: bytes = b"", host: bytes | None = None) -> bytes:
    msg = struct.pack("!BBHI", 4, cmd, port, ip) + userid + b"\x00"
    return msg + (host + b"\x00" if host is not None else b"")


CHUNKINGS = [None, 1, 2, 3, 7]


# --- SOCKS5 happy paths


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_socks5_noauth_connect_hostname(chunk: int | None) -> None:
    data = b"\x05\x01\x00" + s5_host(1, b"WWW.Example.com", 443) + b"GET /"
    hs, out = feed(data, chunk)
    assert out == b"\x05\x00"
    assert hs.error is None
    assert hs.request == SocksRequest(
        5, SocksCommand.CONNECT, "www.example.com", 443, "hostname", None, None
    )
    assert hs.leftover == b"GET /"
    assert hs.buffered == 0


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_socks5_userpass_preferred_and_isolation_keys(chunk: int | None) -> None:
    data = b"\x05\x02\x00\x02" + userpass(b"alice", b"s3cret") + s5_host(1, b"a.onion", 80)
    hs, out = feed(data, chunk)
    assert out == b"\x05\x02\x01\x00"
    assert hs.request is not None
    assert (hs.request.username, hs.request.password) == (b"alice", b"s3cret")


def test_socks5_empty_username_and_password_accepted() -> None:
    hs, out = feed(b"\x05\x01\x02" + userpass(b"", b"") + s5_host(1, b"x.org", 80))
    assert out == b"\x05\x02\x01\x00"
    assert hs.request is not None
    assert (hs.request.username, hs.request.password) == (b"", b"")


def test_socks5_userpass_after_noauth_is_tolerated_like_c_tor() -> None:
    hs, out = feed(b"\x05\x01\x00" + userpass(b"u", b"p") + s5_host(1, b"x.org", 80))
    assert out == b"\x05\x00\x01\x00"
    assert hs.request is not None
    assert (hs.request.username, hs.request.password) == (b"u", b"p")


def test_prefer_no_auth() -> None:
    hs, out = feed(b"\x05\x02\x02\x00" + s5_host(1, b"x.org", 80), prefer_no_auth=True)
    assert out == b"\x05\x00"
    assert hs.request is not None and hs.request.username is None
    # ...but username/password is still chosen when it is the only usable method.
    hs, out = feed(
        b"\x05\x01\x02" + userpass(b"u", b"") + s5_host(1, b"x.org", 80), prefer_no_auth=True
    )
    assert out == b"\x05\x02\x01\x00"


def test_socks5_ipv4_and_ipv6() -> None:
    hs, _ = feed(b"\x05\x01\x00" + s5_request(1, 1, bytes([93, 184, 216, 34]), 80))
    assert hs.request is not None
    assert (hs.request.host, hs.request.address_type) == ("93.184.216.34", "ipv4")
    v6 = ipaddress.IPv6Address("2001:db8::1").packed
    hs, _ = feed(b"\x05\x01\x00" + s5_request(1, 4, v6, 8080))
    assert hs.request is not None
    assert (hs.request.host, hs.request.address_type, hs.request.port) == (
        "2001:db8::1",
        "ipv6",
        8080,
    )


@pytest.mark.parametrize(
    ("text", "host", "kind"),
    [
        (b"10.0.0.1", "10.0.0.1", "ipv4"),
        (b"[2001:DB8::1]", "2001:db8::1", "ipv6"),
        (b"2001:db8::1", "2001:db8::1", "ipv6"),
        (b"example.com.", "example.com.", "hostname"),
        (b"under_score.example", "under_score.example", "hostname"),
        (b"127.1", "127.1", "hostname"),  # not a dotted quad, but valid LDH labels (as C tor)
    ],
)
def test_socks5_hostname_field_classified(text: bytes, host: str, kind: str) -> None:
    hs, _ = feed(b"\x05\x01\x00" + s5_host(1, text, 80))
    assert hs.request is not None
    assert (hs.request.host, hs.request.address_type) == (host, kind)


def test_socks5_resolve_and_resolve_ptr() -> None:
    hs, _ = feed(b"\x05\x01\x00" + s5_host(0xF0, b"torproject.org", 0))
    assert hs.request is not None and hs.request.command is SocksCommand.RESOLVE
    hs, _ = feed(b"\x05\x01\x00" + s5_request(0xF1, 1, bytes([1, 2, 3, 4]), 0))
    assert hs.request is not None and hs.request.command is SocksCommand.RESOLVE_PTR
    assert hs.request.host == "1.2.3.4"
    hs, _ = feed(b"\x05\x01\x00" + s5_host(0xF1, b"1.2.3.4", 0))  # IP as text is fine too
    assert hs.request is not None and hs.request.address_type == "ipv4"


def test_pipelined_greeting_and_request_in_one_segment() -> None:
    hs = SocksHandshake()
    hs.receive_data(b"\x05\x01\x00" + s5_host(1, b"x.org", 80) + b"data")
    assert hs.data_to_send() == b"\x05\x00"
    assert hs.data_to_send() == b""  # drained
    assert hs.request is not None and hs.leftover == b"data"


def test_data_after_request_goes_to_leftover_and_is_not_parsed() -> None:
    hs = SocksHandshake()
    hs.receive_data(b"\x05\x01\x00" + s5_host(1, b"x.org", 80))
    hs.receive_data(b"\x05\x01\x00more")
    assert hs.leftover == b"\x05\x01\x00more"
    assert hs.error is None


def test_torS0X_format_zero_accepted_others_refused() -> None:
    hs, out = feed(b"\x05\x01\x02" + userpass(b"<torS0X>0", b"iso") + s5_host(1, b"x.org", 80))
    assert out.endswith(b"\x01\x00") and hs.request is not None
    assert hs.request.username == b"<torS0X>0" and hs.request.password == b"iso"
    for user in (b"<torS0X>1", b"<torS0X>0extra", b"<torS0X>"):
        hs, out = feed(b"\x05\x01\x02" + userpass(user, b"x"))
        assert hs.error is not None and "351" in hs.error
        assert out == b"\x05\x02\x01\x01"


# --- SOCKS5 errors


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"\x05\x00", b"\x05\xff"),  # no methods
        (b"\x05\x02\x01\x03", b"\x05\xff"),  # GSSAPI and something else only
        (b"\x05\x01\x02\x05", b"\x05\x02\x01\x01"),  # bad RFC 1929 version
        (b"\x05\x01\x00" + s5_host(2, b"x.org", 80), b"\x05\x00" + S5_ERR[7]),  # BIND
        (b"\x05\x01\x00" + s5_host(3, b"x.org", 80), b"\x05\x00" + S5_ERR[7]),  # UDP
        (b"\x05\x01\x00\x05\x42\x00\x01", b"\x05\x00" + S5_ERR[7]),  # unknown command
        (b"\x05\x01\x00\x05\x01\x00\x02", b"\x05\x00" + S5_ERR[8]),  # unknown ATYP
        (b"\x05\x01\x00\x04\x01\x00\x01", b"\x05\x00" + S5_ERR[1]),  # wrong version
        (b"\x05\x01\x00\x05\x01\x01\x01", b"\x05\x00" + S5_ERR[1]),  # reserved != 0
        (b"\x05\x01\x00" + s5_host(1, b"", 80), b"\x05\x00" + S5_ERR[1]),  # empty host
        (b"\x05\x01\x00" + s5_host(1, b"bad host", 80), b"\x05\x00" + S5_ERR[1]),
        (b"\x05\x01\x00" + s5_host(1, b"nul\x00.com", 80), b"\x05\x00" + S5_ERR[1]),
        (b"\x05\x01\x00" + s5_host(1, "caf\u00e9.fr".encode(), 80), b"\x05\x00" + S5_ERR[1]),
        (b"\x05\x01\x00" + s5_host(1, b"-lead.com", 80), b"\x05\x00" + S5_ERR[1]),
        (b"\x05\x01\x00" + s5_host(1, b"a..b", 80), b"\x05\x00" + S5_ERR[1]),
        (b"\x05\x01\x00" + s5_host(1, b"[nonsense]", 80), b"\x05\x00" + S5_ERR[1]),
        (b"\x05\x01\x00" + s5_host(1, b"fe80::1%eth0", 80), b"\x05\x00" + S5_ERR[1]),
        (b"\x05\x01\x00" + s5_host(1, b"x.org", 0), b"\x05\x00" + S5_ERR[1]),  # port 0
        (b"\x05\x01\x00" + s5_host(0xF1, b"x.org", 0), b"\x05\x00" + S5_ERR[8]),  # PTR of name
    ],
)
def test_socks5_errors(data: bytes, reply: bytes, chunk: int | None) -> None:
    hs, out = feed(data + b"trailing junk", chunk)
    assert hs.error is not None
    assert hs.request is None
    assert out == reply
    assert hs.leftover == b"" and hs.buffered == 0


def test_input_after_error_is_ignored() -> None:
    hs, _ = feed(b"\x05\x00")
    hs.receive_data(b"\x05\x01\x00")
    assert hs.data_to_send() == b"" and hs.request is None


@pytest.mark.parametrize(
    "first", [b"GET / HTTP/1.1\r\n", b"POST /", b"CONNECT x:443 HTTP/1.1", b"HEAD /", b"PUT /"]
)
def test_http_gets_explanatory_page(first: bytes) -> None:
    hs, out = feed(first, 1)
    assert hs.error is not None and "HTTP" in hs.error
    assert out.startswith(b"HTTP/1.0 501 ")
    assert b"SOCKS proxy, not an HTTP proxy" in out


@pytest.mark.parametrize("first", [b"\x00", b"\x01\x01", b"\x06", b"\xff", b"x"])
def test_unknown_version_closes_without_reply(first: bytes) -> None:
    hs, out = feed(first + b"\x00\x00")
    assert hs.error is not None and out == b""


def test_nothing_happens_on_empty_input() -> None:
    hs, out = feed(b"")
    assert (hs.request, hs.error, out) == (None, None, b"")


# --- SOCKS4 / SOCKS4a


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_socks4_connect_ip(chunk: int | None) -> None:
    hs, out = feed(s4(1, 80, 0x0A000001, b"user") + b"hi", chunk)
    assert out == b""
    assert hs.request == SocksRequest(
        4, SocksCommand.CONNECT, "10.0.0.1", 80, "ipv4", b"user", None
    )
    assert hs.leftover == b"hi"


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_socks4a_hostname(chunk: int | None) -> None:
    hs, _ = feed(s4(1, 443, 0x00000001, b"", b"Duck.Example"), chunk)
    assert hs.request == SocksRequest(
        4, SocksCommand.CONNECT, "duck.example", 443, "hostname", None, None
    )


def test_socks4a_resolve() -> None:
    hs, _ = feed(s4(0xF0, 0, 0x000000FF, b"u", b"torproject.org"))
    assert hs.request is not None
    assert (hs.request.command, hs.request.port) == (SocksCommand.RESOLVE, 0)


@pytest.mark.parametrize("chunk", [None, 1])
@pytest.mark.parametrize(
    "data",
    [
        s4(2, 80, 0x0A000001),  # BIND
        s4(0xF1, 80, 0x0A000001),  # RESOLVE_PTR is SOCKS5 only
        s4(1, 80, 0),  # 0.0.0.0
        s4(1, 0, 0x0A000001),  # port 0 for CONNECT
        s4(1, 80, 1, b"", b""),  # empty 4a hostname
        s4(1, 80, 1, b"", b"bad host"),
        s4(1, 80, 1, b"x" * 513),  # user id too long
        s4(1, 80, 1, b"", b"a" * 256),  # hostname too long
    ],
)
def test_socks4_errors(data: bytes, chunk: int | None) -> None:
    hs, out = feed(data, chunk)
    assert hs.error is not None and hs.request is None
    assert out == S4_REJECT


def test_socks4_never_terminated_fields_are_bounded() -> None:
    hs = SocksHandshake()
    hs.receive_data(struct.pack("!BBHI", 4, 1, 80, 0x0A000001))
    for _ in range(600):
        hs.receive_data(b"A")
        assert hs.buffered <= MAX_HANDSHAKE_BUFFER
        if hs.error:
            break
    assert hs.error is not None and "user id" in hs.error
    assert hs.data_to_send() == S4_REJECT

    hs = SocksHandshake()
    hs.receive_data(s4(1, 80, 1, b"u" * 512))
    for _ in range(300):
        hs.receive_data(b"a")
        assert hs.buffered <= MAX_HANDSHAKE_BUFFER
    assert hs.error is not None and "hostname" in hs.error


def test_longest_valid_socks4a_fits() -> None:
    host = b".".join([b"a" * 63] * 4)[:255]
    hs, _ = feed(s4(1, 80, 1, b"u" * 512, host), 1)
    assert hs.request is not None and len(hs.request.host) == 255


# --- replies


def connected(data: bytes, **kwargs: bool) -> SocksHandshake:
    hs, _ = feed(data, **kwargs)
    assert hs.request is not None
    return hs


S5_CONNECT = b"\x05\x01\x00" + s5_host(1, b"x.org", 80)
S4_CONNECT = s4(1, 80, 1, b"", b"x.org")


def test_reply_connected() -> None:
    assert connected(S5_CONNECT).reply_connected() == b"\x05\x00\x00\x01" + bytes(6)
    assert (
        connected(S5_CONNECT).reply_connected("::1", 9)
        == b"\x05\x00\x00\x04" + ipaddress.IPv6Address("::1").packed + b"\x00\x09"
    )
    assert connected(S4_CONNECT).reply_connected() == b"\x00\x5a" + bytes(6)
    assert (
        connected(S4_CONNECT).reply_connected("1.2.3.4", 80) == b"\x00\x5a\x00\x50\x01\x02\x03\x04"
    )


def test_only_first_reply_is_produced() -> None:
    hs = connected(S5_CONNECT)
    assert hs.reply_error(SocksReply.HOST_UNREACHABLE) == S5_ERR[4]
    assert hs.reply_connected() == b""


def test_reply_without_request_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        SocksHandshake().reply_connected()


def test_reply_error_socks4_and_extended() -> None:
    assert connected(S4_CONNECT).reply_error(SocksReply.TTL_EXPIRED) == S4_REJECT
    assert connected(S5_CONNECT).reply_error(SocksReply.HS_DESC_NOT_FOUND) == S5_ERR[1]
    assert connected(S5_CONNECT).reply_error(0xF0, fallback=4) == S5_ERR[4]
    assert connected(S5_CONNECT, extended_errors=True).reply_error(0xF0) == S5_ERR[0xF0]
    with pytest.raises(ValueError):
        connected(S5_CONNECT).reply_error(0)


def test_reply_resolved() -> None:
    resolve5 = b"\x05\x01\x00" + s5_host(0xF0, b"x.org", 0)
    assert (
        connected(resolve5).reply_resolved("1.2.3.4", 60)
        == b"\x05\x00\x00\x01\x01\x02\x03\x04\x00\x00"
    )
    assert connected(resolve5).reply_resolved(b"\x01\x02\x03\x04", 60) == (
        b"\x05\x00\x00\x01\x01\x02\x03\x04\x00\x00"
    )
    v6 = ipaddress.IPv6Address("2001:db8::2").packed
    assert (
        connected(resolve5).reply_resolved("2001:db8::2", 60)
        == b"\x05\x00\x00\x04" + v6 + b"\x00\x00"
    )
    ptr5 = b"\x05\x01\x00" + s5_request(0xF1, 1, bytes([1, 2, 3, 4]), 0)
    assert connected(ptr5).reply_resolved("host.example", 60) == (
        b"\x05\x00\x00\x03\x0chost.example\x00\x00"
    )
    assert connected(ptr5).reply_resolved(b"abcd", 60) == b"\x05\x00\x00\x03\x04abcd\x00\x00"
    with pytest.raises(ValueError):
        connected(ptr5).reply_resolved("a" * 256, 60)
    resolve4 = s4(0xF0, 0, 1, b"", b"x.org")
    assert connected(resolve4).reply_resolved("1.2.3.4", 60) == b"\x00\x5a\x00\x00\x01\x02\x03\x04"
    assert connected(resolve4).reply_resolved("::1", 60) == S4_REJECT


# --- tables


@pytest.mark.parametrize(
    ("reason", "rep"),
    [
        (0, 0x00),
        (1, 0x01),  # MISC
        (2, 0x04),  # RESOLVEFAILED
        (3, 0x05),  # CONNECTREFUSED
        (4, 0x02),  # EXITPOLICY
        (5, 0x01),  # DESTROY
        (6, 0x05),  # DONE before CONNECTED
        (7, 0x06),  # TIMEOUT
        (8, 0x04),  # NOROUTE
        (9, 0x01),  # HIBERNATING
        (10, 0x01),  # INTERNAL
        (11, 0x01),  # RESOURCELIMIT
        (12, 0x05),  # CONNRESET
        (13, 0x01),  # TORPROTOCOL
        (14, 0x01),  # NOTDIRECTORY
        (15, 0x02),  # ENTRYPOLICY
        (258, 0x03),  # NET_UNREACHABLE (client-internal)
        (2 | 512, 0x04),  # flag bits are masked off
        (99, 0x01),  # unknown
    ],
)
def test_end_reason_mapping(reason: int, rep: int) -> None:
    assert socks5_reply_for_end_reason(reason) == rep


def test_downgrade_extended() -> None:
    for code in range(0xF0, 0xF8):
        assert downgrade_extended(code, True) == code
        assert downgrade_extended(code, False) == SocksReply.GENERAL_FAILURE
        assert downgrade_extended(code, False, fallback=4) == 4
    assert downgrade_extended(SocksReply.TTL_EXPIRED, False) == SocksReply.TTL_EXPIRED
    assert SocksReply.HS_INTRO_TIMEDOUT == 0xF7 and SocksReply.HS_BAD_ADDRESS == 0xF6


# --- properties


@settings(max_examples=500)
@given(st.binary(max_size=1200), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_raise_and_stay_bounded(data: bytes, chunk: int) -> None:
    hs = SocksHandshake()
    for i in range(0, len(data), chunk):
        hs.receive_data(data[i : i + chunk])
        assert hs.buffered <= MAX_HANDSHAKE_BUFFER
        hs.data_to_send()
    assert not (hs.error and hs.request)


@settings(max_examples=300)
@given(
    st.sampled_from([b"\x04", b"\x05"]),
    st.binary(max_size=900),
    st.integers(min_value=1, max_value=16),
)
def test_socks_prefixed_garbage_never_raises(version: bytes, rest: bytes, chunk: int) -> None:
    data = version + rest
    hs = SocksHandshake()
    for i in range(0, len(data), chunk):
        hs.receive_data(data[i : i + chunk])
        assert hs.buffered <= MAX_HANDSHAKE_BUFFER
    assert not (hs.error and hs.request)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,20}[a-z0-9])?", fullmatch=True)
HOSTNAMES = (
    st.lists(LABEL, min_size=1, max_size=6)
    .map(".".join)
    .filter(lambda h: len(h) <= 255 and not _is_ip(h))
)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


DESTS = st.one_of(
    HOSTNAMES.map(lambda h: ("hostname", h)),
    st.ip_addresses(v=4).map(lambda a: ("ipv4", str(a))),
    st.ip_addresses(v=6).map(lambda a: ("ipv6", str(a))),
)
AUTH = st.one_of(st.none(), st.tuples(st.binary(max_size=255), st.binary(max_size=255))).filter(
    lambda a: a is None or not a[0].startswith(b"<torS0X>")
)


@settings(max_examples=300)
@given(
    dest=DESTS,
    port=st.integers(min_value=1, max_value=65535),
    command=st.sampled_from([SocksCommand.CONNECT, SocksCommand.RESOLVE]),
    auth=AUTH,
    extra=st.binary(max_size=50),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_socks5_round_trip(
    dest: tuple[str, str],
    port: int,
    command: SocksCommand,
    auth: tuple[bytes, bytes] | None,
    extra: bytes,
    chunk: int,
) -> None:
    kind, host = dest
    if kind == "hostname":
        req = s5_host(command, host.encode(), port)
    else:
        atyp = 1 if kind == "ipv4" else 4
        req = s5_request(command, atyp, ipaddress.ip_address(host).packed, port)
    greeting = b"\x05\x01\x00" if auth is None else b"\x05\x02\x00\x02" + userpass(*auth)
    hs, _ = feed(greeting + req + extra, chunk)
    assert hs.error is None
    assert hs.request == SocksRequest(
        5,
        command,
        host,
        port,
        kind,  # type: ignore[arg-type]
        None if auth is None else auth[0],
        None if auth is None else auth[1],
    )
    assert hs.leftover == extra


@settings(max_examples=200)
@given(
    host=HOSTNAMES,
    port=st.integers(min_value=1, max_value=65535),
    userid=st.binary(max_size=512).filter(lambda b: b"\x00" not in b),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_socks4a_round_trip(host: str, port: int, userid: bytes, chunk: int) -> None:
    hs, _ = feed(s4(1, port, 7, userid, host.encode()), chunk)
    assert hs.request == SocksRequest(
        4, SocksCommand.CONNECT, host, port, "hostname", userid or None, None
    )
