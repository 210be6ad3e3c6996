"""Managed pluggable transports, sans-I/O (proto/pt.py): pt-spec's stdout protocol, the
bridge arguments in SOCKS5 username/password, and the SOCKS5 client handshake."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.proto.pt import (
    CMethod,
    CMethodError,
    CMethodsDone,
    Log,
    ManagedProxyParser,
    PtProtocolError,
    Socks5Connect,
    Socks5Error,
    Status,
    Unknown,
    managed_env,
    parse_kv_line,
    socks_auth_for_args,
    split_args,
)

OBFS4PROXY_OUTPUT = (
    b"VERSION 1\n"
    b"CMETHOD obfs4 socks5 127.0.0.1:39241\n"
    b"CMETHOD-ERROR meek_lite no such transport is supported\n"
    b"CMETHODS DONE\n"
    b'LOG SEVERITY=notice MESSAGE="obfs4proxy - launched v0.0.14"\n'
    b"STATUS TRANSPORT=obfs4 ADDRESS=127.13.0.1:9002 CONNECT=Success\n"
)


def test_obfs4proxy_session() -> None:
    p = ManagedProxyParser(("obfs4", "meek_lite"))
    events = p.feed(OBFS4PROXY_OUTPUT[:30]) + p.feed(OBFS4PROXY_OUTPUT[30:])
    assert p.done and p.version == "1"
    assert p.methods == {"obfs4": CMethod("obfs4", "socks5", "127.0.0.1", 39241)}
    assert p.errors == {"meek_lite": "no such transport is supported"}
    assert isinstance(events[3], CMethodsDone)
    assert events[4] == Log("notice", "obfs4proxy - launched v0.0.14")
    assert events[5] == Status("obfs4", (("ADDRESS", "127.13.0.1:9002"), ("CONNECT", "Success")))


@pytest.mark.parametrize(
    "data",
    [
        b"CMETHOD obfs4 socks5 127.0.0.1:1\n",  # before VERSION
        b"VERSION 2\n",
        b"VERSION-ERROR no-version\n",
        b"ENV-ERROR no TOR_PT_STATE_LOCATION\n",
        b"VERSION 1\nCMETHOD obfs4 socks5 127.0.0.1:99999\n",
        b"VERSION 1\nCMETHOD obfs4 socks5 localhost:1\n",
        b"VERSION 1\nCMETHOD obfs4 http 127.0.0.1:1\n",
        b"VERSION 1\nCMETHOD snowflake socks5 127.0.0.1:1\n",  # not asked for
        b"VERSION 1\nLOG SEVERITY=loud MESSAGE=x\n",
        b'VERSION 1\nLOG SEVERITY=notice MESSAGE="unterminated\n',
        b"\xff\xfe\n",
        b"x" * 9000,
    ],
)
def test_protocol_errors(data: bytes) -> None:
    with pytest.raises(PtProtocolError):
        ManagedProxyParser(("obfs4",)).feed(data)


def test_unknown_lines_are_passed_on() -> None:
    p = ManagedProxyParser(("obfs4",))
    assert p.feed(b"VERSION 1\nSOMETHING new\n")[1] == Unknown("SOMETHING new")


def test_kv_quoting() -> None:
    assert parse_kv_line(r'A=1 MESSAGE="a \"q\" \\ \n\101" B=x') == [
        ("A", "1"),
        ("MESSAGE", 'a "q" \\ \nA'),
        ("B", "x"),
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_crashes(data: bytes) -> None:
    p = ManagedProxyParser(("obfs4",))
    with contextlib.suppress(PtProtocolError):
        p.feed(data)


def test_env() -> None:
    env = managed_env({"PATH": "/bin"}, state_dir="/d/pt_state", transports=["obfs4", "x"])
    assert env == {
        "PATH": "/bin",
        "TOR_PT_MANAGED_TRANSPORT_VER": "1",
        "TOR_PT_STATE_LOCATION": "/d/pt_state",
        "TOR_PT_CLIENT_TRANSPORTS": "obfs4,x",
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
    }
    assert (
        managed_env({}, state_dir="s", transports=["a"], proxy="socks5://1.2.3.4:5")["TOR_PT_PROXY"]
        == "socks5://1.2.3.4:5"
    )


def test_socks_args_encoding() -> None:
    assert socks_auth_for_args([]) is None
    user, pw = socks_auth_for_args([("cert", "ab;c\\d"), ("iat-mode", "0")]) or (b"", b"")
    assert user == b"cert=ab\\;c\\\\d;iat-mode=0" and pw == b"\x00"
    long = [("cert", "x" * 300)]
    user, pw = socks_auth_for_args(long) or (b"", b"")
    assert len(user) == 255 and user + pw == b"cert=" + b"x" * 300
    with pytest.raises(ValueError, match="at most 510"):
        socks_auth_for_args([("cert", "x" * 600)])


_ARG_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_ARG_TEXT.filter(lambda k: k and "=" not in k), _ARG_TEXT), max_size=6))
def test_socks_args_round_trip(args: list[tuple[str, str]]) -> None:
    try:
        auth = socks_auth_for_args(args)
    except ValueError:
        assert len(";".join(f"{k}={v}" for k, v in args).encode()) > 255
        return
    if auth is None:
        assert not args
        return
    user, pw = auth
    assert len(user) <= 255 and 1 <= len(pw) <= 255
    joined = user + (b"" if pw == b"\x00" else pw)
    assert split_args(joined) == args


def test_socks5_connect_with_auth() -> None:
    hs = Socks5Connect("127.13.0.1", 9002, b"cert=x;iat-mode=0", b"\x00")
    assert hs.start() == b"\x05\x01\x02"
    out = hs.receive(b"\x05\x02")
    assert out == b"\x01\x11cert=x;iat-mode=0\x01\x00"
    out = hs.receive(b"\x01\x00")
    assert out == b"\x05\x01\x00\x01\x7f\x0d\x00\x01\x23\x2a"
    assert not hs.done
    hs.receive(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00TLS")
    assert hs.done and hs.leftover == b"TLS"


def test_socks5_refusals() -> None:
    hs = Socks5Connect("127.0.0.1", 1, b"u", b"p")
    hs.start()
    with pytest.raises(Socks5Error, match="method 255"):
        hs.receive(b"\x05\xff")
    hs = Socks5Connect("127.0.0.1", 1)
    hs.start()
    hs.receive(b"\x05\x00")
    with pytest.raises(Socks5Error, match="connection refused") as info:
        hs.receive(b"\x05\x05\x00\x01" + bytes(6))
    assert info.value.reply == 5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_socks5_reply_garbage(data: bytes) -> None:
    hs = Socks5Connect("::1", 9, b"u", b"p")
    hs.start()
    with contextlib.suppress(Socks5Error):
        hs.receive(data)


def test_cmethod_error_event() -> None:
    p = ManagedProxyParser()
    assert p.feed(b"VERSION 1\nCMETHOD-ERROR x broken\n")[1] == CMethodError("x", "broken")
