"""The control port's text layer and secrets: commands, quoting, replies (control-spec §2),
hashed passwords as C tor makes them, SAFECOOKIE, and the options that turn it on."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puretor.config import TorConfig
from puretor.errors import ConfigError
from puretor.proto.control import (
    MAX_LINE,
    ArgumentError,
    CommandReader,
    ControlCommand,
    Reply,
    dot_encode,
    event,
    parse_keywords,
    quote,
    reply,
    split_words,
    unquote,
)
from puretor.proto.controlauth import (
    hash_password,
    parse_hashed_password,
    password_matches,
    safecookie_hashes,
)

# Made by C tor 0.4.9: `tor --hash-password secret`.
CTOR_HASH = "16:C04B4CA8F5EB9524601BB39FB724C94B673A136FB8580C5A8EADA03006"


def _commands(data: bytes, chunk: int = 0) -> tuple[list[ControlCommand], str | None]:
    reader = CommandReader()
    out = []
    pieces = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        reader.receive_data(piece)
        while (cmd := reader.next_command()) is not None:
            out.append(cmd)
    return out, reader.error


# -- commands -------------------------------------------------------------------------------


def test_one_line_commands_with_crlf_or_lf() -> None:
    cmds, error = _commands(b"GETINFO version\r\nsetevents CIRC BW\nQUIT\r\n")
    assert error is None
    assert [(c.name, c.args) for c in cmds] == [
        ("GETINFO", "version"),
        ("SETEVENTS", "CIRC BW"),
        ("QUIT", ""),
    ]
    assert cmds[1].keyword == "setevents"


def test_a_plus_command_carries_dot_decoded_data() -> None:
    cmds, _ = _commands(b"+LOADCONF\r\nSocksPort 9050\r\n..dot\r\n.\r\nQUIT\r\n")
    assert cmds[0] == ControlCommand("LOADCONF", "", "SocksPort 9050\n.dot")
    assert cmds[1].name == "QUIT"


def test_incomplete_input_waits() -> None:
    cmds, error = _commands(b"GETINFO vers")
    assert cmds == [] and error is None


def test_a_line_longer_than_the_limit_is_an_error_and_nothing_more_is_read() -> None:
    cmds, error = _commands(b"GETINFO " + b"x" * (MAX_LINE + 10) + b"\r\nQUIT\r\n", chunk=4096)
    assert cmds == [] and error == "Line too long."


def test_a_long_line_without_newline_is_refused_before_it_is_all_buffered() -> None:
    reader = CommandReader()
    reader.receive_data(b"A" * (MAX_LINE + 1))
    assert reader.next_command() is None and reader.error == "Line too long."
    reader.receive_data(b"B" * 1000)
    assert reader.buffered <= MAX_LINE + 1


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=50))
def test_chunking_does_not_change_the_commands(data: bytes, chunk: int) -> None:
    assert _commands(data) == _commands(data, chunk)


# -- arguments ------------------------------------------------------------------------------


@given(st.text(alphabet=st.characters(max_codepoint=255)))
def test_quote_and_unquote_round_trip(text: str) -> None:
    quoted = quote(text)
    assert unquote(quoted) == (text, len(quoted))
    assert "\n" not in quoted and "\r" not in quoted


def test_unquote_c_escapes() -> None:
    assert unquote(r'"a\"b\\c\n\x41\101"') == ('a"b\\c\nAA', 19)
    with pytest.raises(ArgumentError):
        unquote('"unterminated')
    with pytest.raises(ArgumentError):
        unquote(r'"bad \q escape"')


def test_keywords_and_words() -> None:
    assert parse_keywords('SocksPort=9050 Log="notice stdout" ExitNodes') == [
        ("SocksPort", "9050", False),
        ("Log", "notice stdout", True),
        ("ExitNodes", None, False),
    ]
    assert parse_keywords('"my password"') == [("", "my password", True)]
    assert split_words('a "b c" d') == ["a", "b c", "d"]


# -- replies --------------------------------------------------------------------------------


def test_reply_lines_and_data_blocks() -> None:
    out = Reply().line("version=0.4.9.0").data("config-text=", "A 1\n.B\n").line("OK").to_bytes()
    assert out == (b"250-version=0.4.9.0\r\n250+config-text=\r\nA 1\r\n..B\r\n.\r\n250 OK\r\n")
    assert reply(514, "Authentication required.") == b"514 Authentication required.\r\n"
    assert event("BW 1 2") == b"650 BW 1 2\r\n"
    assert event("NOTICE", "two\nlines") == b"650+NOTICE\r\ntwo\r\nlines\r\n.\r\n650 OK\r\n"
    assert reply(250, "no\r\nsmuggled") == b"250 no smuggled\r\n"


@given(st.lists(st.text(alphabet="ab. ", max_size=5), max_size=6))
def test_dot_encoding_decodes_back(lines: list[str]) -> None:
    body = "\n".join(lines)
    encoded = dot_encode(body).encode()
    cmds, _ = _commands(b"+X\r\n" + encoded)
    expected = body[:-1] if body.endswith("\n") else body
    assert cmds == [ControlCommand("X", "", expected)]


# -- secrets --------------------------------------------------------------------------------


def test_a_password_hashed_by_c_tor_verifies() -> None:
    hashed = parse_hashed_password(CTOR_HASH)
    assert password_matches(b"secret", hashed)
    assert not password_matches(b"Secret", hashed)


def test_our_hashes_have_c_tors_shape_and_verify() -> None:
    made = hash_password(b"pw", salt=bytes(8))
    assert made.startswith("16:") and len(made) == 3 + 58
    assert made[3 + 16 : 3 + 18] == "60"  # C tor's count byte (96)
    assert password_matches(b"pw", parse_hashed_password(made))


@pytest.mark.parametrize("bad", ["16:ABC", "hello", "16:" + "G" * 58, ""])
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_hashed_password(bad)


def test_safecookie_uses_control_spec_constants() -> None:
    cookie, cnonce, snonce = b"c" * 32, b"n" * 32, b"s" * 32
    server, client = safecookie_hashes(cookie, cnonce, snonce)
    message = cookie + cnonce + snonce
    assert (
        server
        == hmac.new(
            b"Tor safe cookie authentication server-to-controller hash", message, hashlib.sha256
        ).digest()
    )
    assert (
        client
        == hmac.new(
            b"Tor safe cookie authentication controller-to-server hash", message, hashlib.sha256
        ).digest()
    )


def test_hash_password_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from puretor.app.daemon import run_daemon

    assert run_daemon(["--hash-password", "secret"], version="x") == 0
    printed = capsys.readouterr().out.strip()
    assert password_matches(b"secret", parse_hashed_password(printed))


# -- options --------------------------------------------------------------------------------


def test_a_control_port_without_authentication_is_refused() -> None:
    with pytest.raises(ConfigError, match="no authentication method"):
        TorConfig.from_options(ControlPort="9051")


def test_an_explicit_cookie_authentication_0_allows_it_with_c_tors_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="puretor"):
        cfg = TorConfig.from_options(ControlPort="9051", CookieAuthentication=0)
    assert cfg.control_ports[0].address == "127.0.0.1" and cfg.control_ports[0].port == 9051
    assert "any program on your computer can reconfigure" in caplog.text


def test_control_options_parse(tmp_path: Path) -> None:
    cfg = TorConfig.from_options(
        ControlPort=["auto", "[::1]:9151"],
        ControlSocket=str(tmp_path / "control"),
        HashedControlPassword=CTOR_HASH,
        CookieAuthentication=1,
        CookieAuthFile=str(tmp_path / "cookie"),
    )
    assert [(p.address, p.port) for p in cfg.control_ports] == [
        ("127.0.0.1", "auto"),
        ("::1", 9151),
    ]
    assert cfg.control_sockets == (tmp_path / "control",)
    assert cfg.option_lines("HashedControlPassword") == [CTOR_HASH]
    assert cfg.option_lines("CookieAuthentication") == ["1"]
    with pytest.raises(ConfigError, match="HashedControlPassword"):
        TorConfig.from_options(ControlPort="9051", HashedControlPassword="nonsense")
    with pytest.raises(ConfigError, match="ControlSocket"):
        TorConfig.from_options(ControlPort="unix:/tmp/x", CookieAuthentication=1)


def test_dir_authority_lines_read_back_as_written() -> None:
    """GETCONF/config-text write DirAuthority as torrc text that parses to the same."""
    line = "auth1 orport=5000 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + "BEEF" * 10
    cfg = TorConfig.from_options(DirAuthority=line, TestingTorNetwork=1)
    written = cfg.option_lines("DirAuthority")
    assert written == [line]
    again = TorConfig.from_options(DirAuthority=written[0], TestingTorNetwork=1)
    assert again.dir_authorities == cfg.dir_authorities
