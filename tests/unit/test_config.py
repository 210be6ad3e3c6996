"""config: torrc syntax (torrc_format.txt), the C tor command line, and TorConfig loading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.config import (
    OPTION_NAMES,
    LogRange,
    LogSpec,
    SocksPortConfig,
    TorConfig,
    default_data_directory,
    load_config,
    parse_command_line,
    parse_interval,
    parse_torrc,
)
from puretor.errors import ConfigError

AUTH_LINE = (
    "test000a orport=5000 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + " ".join(["BEEF"] * 10)
)
FALLBACK_LINE = "127.0.0.1:7001 orport=5001 id=" + "C" * 40


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may read the developer's real ~/.config/puretor/torrc.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def torrc(tmp_path: Path, text: str, name: str = "torrc") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str, *args: str) -> TorConfig:
    return load_config(["-f", torrc(tmp_path, text), *args])


# --- tokenizer: the examples of torrc_format.txt §4.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Log Bar", [("Log", "Bar")]),
        ("Log    Bar    Baz", [("Log", "Bar    Baz")]),
        ("Log    Bar    Baz    \n", [("Log", "Bar    Baz")]),
        ("Log\\\nWorld", [("Log", "World")]),
        ("Log World   #today\nLog World#tomorrow", [("Log", "World"), ("Log", "World")]),
        ('Log "World!"', [("Log", "World!")]),
        ('Log "\\"World\\"\\nand\\nuniverse"', [("Log", '"World"\nand\nuniverse')]),
        ('Log "\\x41\\101\\t\\\\"  # c', [("Log", "AA\t\\")]),
        ("Log\\\nWorld\\\nand\\\nfriends", [("Log", "Worldandfriends")]),
        ("Log \\\nMany\\\\\\\nBacksl\\ashes \\\\\nhere", [("Log", "Many\\\\Backsl\\ashes \\here")]),
        (
            "Log entry      \\\n # has comments \\\n and some       \\\n are # generally \\\n silly",
            [("Log", "entry        and some        are  silly")],
        ),
        (
            "Log entry      \\\n # has comments\n and some       \\\n are # generally\n silly",
            [("Log", "entry        and some        are  silly")],
        ),
        ("Log", [("Log", "")]),
        ("Log#c", [("Log", "")]),
        ("  \t# only a comment\n\n\n", []),
        ("Log a\r\nLog b\r\n", [("Log", "a"), ("Log", "b")]),
    ],
)
def test_torrc_format_examples(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(k, v) for k, v, _ in parse_torrc(text, "t")] == expected


def test_line_numbers_and_canonical_names() -> None:
    text = "# header\n\nsocksport 9050\n  LOG notice \\\n  stdout\nmaxcircuitdirtiness 5 minutes\nl info\n"
    assert parse_torrc(text, "t") == [
        ("SocksPort", "9050", 3),
        ("Log", "notice   stdout", 4),
        ("MaxCircuitDirtiness", "5 minutes", 6),
        ("Log", "info", 7),  # C tor's abbreviation "l"
    ]


def test_magic_prefixes_stay_on_the_key() -> None:
    assert parse_torrc("+SocksPort 9150\n/Log\n", "t") == [
        ("+SocksPort", "9150", 1),
        ("/Log", "", 2),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SocksPort 9050\nFrobnicate 1\n", "t:2: unknown option 'Frobnicate'"),
        ("\n\nexitnodes {us}\n", "t:3: C tor option 'ExitNodes' is not supported by puretor"),
        ("%include /etc/tor/torrc.d/*.conf", "t:1: '%include' is not supported"),
        ('Log "abc', "t:1: unterminated quoted string"),
        ('Log "a\\qb"', "t:1: invalid escape"),
        ('Log "abc" def', "t:1: excess data after quoted string"),
        ('Log "a\\0b"', "t:1: NUL in quoted string"),
        ("Log a\0b", "NUL byte"),
    ],
)
def test_tokenizer_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("{", r"\{")):
        parse_torrc(text, "t")


# --- tokenizer properties

KEYS = st.sampled_from(OPTION_NAMES).flatmap(
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda ups: (
            name,
            "".join(c.upper() if u else c.lower() for c, u in zip(name, ups, strict=True)),
        )
    )
)
PLAIN = (
    st.text(
        st.characters(codec="utf-8", exclude_characters='\\#"\n\r\0', exclude_categories=["Cs"]),
        max_size=30,
    )
    .map(lambda v: v.strip(" \t\x0b\x0c"))
    .filter(lambda v: not v.startswith('"'))
)
GAP = st.sampled_from(["", "\n", "\n\n", "# comment\n", "   \n", "\t# x\n"])


@settings(max_examples=300)
@given(st.lists(st.tuples(GAP, KEYS, st.sampled_from([" ", "\t", "   "]), PLAIN, st.booleans())))
def test_generated_files_tokenize_exactly(
    entries: list[tuple[str, tuple[str, str], str, str, bool]],
) -> None:
    text, expected, line = "", [], 1
    for gap, (canonical, spelled), sep, value, comment in entries:
        text += gap
        line += gap.count("\n")
        text += f"{spelled}{sep}{value}" + (" # trailing" if comment else "") + "\n"
        expected.append((canonical, value.rstrip(" \t\r\x0b\x0c"), line))
        line += 1
    assert parse_torrc(text, "gen") == expected


def c_quote(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@settings(max_examples=300)
@given(st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=40))
def test_quoted_values_round_trip(value: str) -> None:
    assert parse_torrc(f"Log {c_quote(value)}  # c\nSocksPort 1\n", "q") == [
        ("Log", value, 1),
        ("SocksPort", "1", 2),
    ]


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_config_error(text: str) -> None:
    try:
        entries = parse_torrc(text, "fuzz")
    except ConfigError:
        return
    for key, _value, line in entries:
        assert key.lstrip("+/") in OPTION_NAMES
        assert 1 <= line <= text.count("\n") + 1


# --- command line


def test_command_line_forms() -> None:
    cmd = parse_command_line(
        [
            "-f",
            "~/my torrc",
            "--SocksPort",
            "9150",
            "-log",
            "info stdout",
            "safelogging",
            "0",
            "--+SocksPort",
            "9151",
            "--/FallbackDir",
            "--verify-config",
            "-h",
            "--defaults-torrc",
            "/etc/d",
        ]
    )
    assert cmd.torrc_path == Path("~/my torrc").expanduser()
    assert cmd.overrides == [
        ("SocksPort", "9150", 3),
        ("Log", "info stdout", 5),
        ("SafeLogging", "0", 7),
        ("+SocksPort", "9151", 9),
        ("/FallbackDir", "", 11),
    ]
    assert cmd.flags == {"--verify-config": "", "--help": "", "--defaults-torrc": "/etc/d"}
    torrc_path, overrides, flags = parse_command_line(["--version"])  # a plain 3-tuple
    assert (torrc_path, overrides, flags) == (None, [], {"--version": ""})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--SocksPort"], "with no value"),
        (["-f"], "needs a value"),
        (["--Bogus", "1"], "unknown option 'Bogus'"),
        (["--list-fingerprint"], "not supported"),
        (["--ExitNodes", "{de}"], "not supported by puretor"),
    ],
)
def test_command_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_command_line(argv)


# --- values


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("30 seconds", 30),
        ("10 minutes", 600),
        ("1 hour", 3600),
        ("1.5 HOURS", 5400),
        ("2 days", 172800),
        ("1 week", 604800),
        ("1 month", 2629728),
        ("10minutes", 600),
    ],
)
def test_intervals(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


def test_msec_intervals() -> None:
    assert parse_interval("250 msec", msec=True) == 250
    assert parse_interval("2 seconds", msec=True) == 2000
    # A bare number is milliseconds for a msec interval (C tor's time_msec_units).
    assert parse_interval("250", msec=True) == 250
    with pytest.raises(ValueError):
        parse_interval("1 month", msec=True)


@pytest.mark.parametrize("text", ["", "ten minutes", "-5", "5 fortnights", "5 minutes ago"])
def test_bad_intervals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_interval(text)


# --- SocksPort


def ports(tmp_path: Path, *lines: str) -> tuple[SocksPortConfig, ...]:
    return load(tmp_path, "".join(f"SocksPort {line}\n" for line in lines)).socks_ports


def test_socks_port_default_and_disabled(tmp_path: Path) -> None:
    assert load(tmp_path, "").socks_ports == (SocksPortConfig("127.0.0.1", 9050),)
    assert ports(tmp_path, "0") == ()


@pytest.mark.parametrize(
    ("line", "address", "port"),
    [
        ("9150", "127.0.0.1", 9150),
        ("auto", "127.0.0.1", "auto"),
        ("127.0.0.2:9150", "127.0.0.2", 9150),
        ("[::1]:9050", "::1", 9050),
        ("[::1]:auto", "::1", "auto"),
        ("localhost:9999", "127.0.0.1", 9999),
    ],
)
def test_socks_port_addresses(tmp_path: Path, line: str, address: str, port: object) -> None:
    (cfg,) = ports(tmp_path, line)
    assert (cfg.address, cfg.port) == (address, port)


def test_socks_port_flags(tmp_path: Path) -> None:
    a, b, c = ports(
        tmp_path,
        "9050",
        "9150 IsolateDestAddr IsolateDestPorts NoIsolateClientAddr ExtendedErrors SessionGroup=3",
        "9250 NoIsolateSOCKSAuth isolateclientprotocol IPv6Traffic NoPreferIPv6Automap",
    )
    assert a == SocksPortConfig("127.0.0.1", 9050)
    assert b == SocksPortConfig(
        "127.0.0.1",
        9150,
        isolate_client_addr=False,
        isolate_dest_addr=True,
        isolate_dest_port=True,
        extended_errors=True,
        session_group=3,
    )
    # NoIsolateSOCKSAuth implies PreferSOCKSNoAuth, as in C tor.
    assert (c.isolate_socks_auth, c.prefer_socks_no_auth, c.isolate_client_protocol) == (
        False,
        True,
        True,
    )
    assert a.prefer_ipv6_automap and not c.prefer_ipv6_automap


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("9050 IsolateEverything", "unknown SocksPort flag 'IsolateEverything'"),
        ("9050 OnionTrafficOnly", "'OnionTrafficOnly' is not supported"),
        ("9050 NoIPv4Traffic", "'NoIPv4Traffic' is not supported"),
        ("9050 SessionGroup=1 SessionGroup=2", "more than one SessionGroup"),
        ("9050 SessionGroup=x", "invalid SocksPort flag"),
        ("127.0.0.1", "address given but no port"),
        ("127.0.0.1:0", "address given but no port"),
        ("::1:9050", "cannot parse address|need brackets"),
        ("example.com:9050", "not an IP address"),
        ("unix:/run/tor/socks", "unix socket"),
        ("70000", "out of range"),
        ("127.0.0.1:70000", "not a port"),
        ("", "needs a port"),
    ],
)
def test_socks_port_errors(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        ports(tmp_path, line)
    assert ":1: bad SocksPort line" in str(info.value)


def test_socks_port_zero_mixed_with_nonzero(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SocksPort 0"):
        ports(tmp_path, "0", "9050")


def test_non_loopback_socks_port_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="puretor.config"):
        ports(tmp_path, "0.0.0.0:9050")
    assert "reachable from other hosts" in caplog.text


# --- Log


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("notice stdout", LogSpec((LogRange("notice"),), "stdout")),
        ("notice", LogSpec((LogRange("notice"),), "stdout")),
        ("debug-notice StdErr", LogSpec((LogRange("debug", "notice"),), "stderr")),
        ("warn syslog", LogSpec((LogRange("warn"),), "syslog")),
        (
            "info file /var/log/my tor.log",
            LogSpec((LogRange("info"),), "file", Path("/var/log/my tor.log")),
        ),
        (
            "[handshake]debug [~net,~mm]info notice stdout",
            LogSpec(
                (
                    LogRange("debug", "err", ("handshake",)),
                    LogRange("info", "err", ("~net", "~mm")),
                    LogRange("notice"),
                ),
                "stdout",
            ),
        ),
        ("[*]info stdout", LogSpec((LogRange("info"),), "stdout")),
    ],
)
def test_log_lines(tmp_path: Path, value: str, spec: LogSpec) -> None:
    assert load(tmp_path, f"Log {value}\n").logs == (spec,)


def test_log_default_and_min_level(tmp_path: Path) -> None:
    (default,) = load(tmp_path, "").logs
    assert default == LogSpec((LogRange("notice"),), "stdout") and default.min_level == 25
    cfg = load(tmp_path, "Log [circ]debug notice stdout\n")
    assert cfg.logs[0].min_level == logging.DEBUG


@pytest.mark.parametrize(
    "value",
    [
        "loud stdout",
        "[nosuchdomain]info stdout",
        "err-debug stdout",
        "notice nowhere",
        "notice file",
        "notice info stdout",
        "[net info stdout",
        "stdout",
    ],
)
def test_bad_log_lines(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"torrc:2: bad Log line"):
        load(tmp_path, f"\nLog {value}\n")


# --- whole configurations


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config([])
    assert cfg == TorConfig()
    assert cfg.data_directory == tmp_path / "xdg-data" / "puretor"
    assert cfg.max_circuit_dirtiness == 600 and cfg.safe_logging is True
    assert cfg.distinct_subnets and cfg.reject_internal_addresses and cfg.uses_default_fallbacks
    assert cfg.circuit_build_timeout is None and cfg.num_entry_guards is None


def test_default_data_directory_without_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_directory() == Path.home() / ".local" / "share" / "puretor"


def test_typed_options(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "DataDirectory ~/tor-data\n"
        "SafeLogging relay\n"
        "MaxCircuitDirtiness 1 hour\n"
        "NewCircuitPeriod 15\n"
        "CircuitBuildTimeout 0\n"
        "LearnCircuitBuildTimeout 0\n"
        "CircuitStreamTimeout 20 seconds\n"
        "SocksTimeout 1 minute\n"
        "MaxClientCircuitsPending 64\n"
        "NumEntryGuards 2\n"
        "UseEntryGuards 1\n"
        "ClientUseIPv6 0\n"
        "ClientPreferIPv6ORPort auto\n"
        "EnforceDistinctSubnets 0\n"
        "ClientOnionAuthDir /var/lib/auth\n"
        "LogTimeGranularity 250 msec\n"
        "UseDefaultFallbackDirs 0\n",
    )
    assert cfg.data_directory == Path("~/tor-data").expanduser()
    assert cfg.safe_logging == "relay"
    assert cfg.max_circuit_dirtiness == 3600 and cfg.new_circuit_period == 15
    assert cfg.circuit_build_timeout is None and not cfg.learn_circuit_build_timeout
    assert cfg.circuit_stream_timeout == 20 and cfg.socks_timeout == 60
    assert cfg.max_client_circuits_pending == 64 and cfg.num_entry_guards == 2
    assert not cfg.client_use_ipv6 and cfg.client_prefer_ipv6_orport is None
    assert cfg.enforce_distinct_subnets is False and not cfg.distinct_subnets
    assert cfg.client_onion_auth_dir == Path("/var/lib/auth")
    assert cfg.log_time_granularity == 0.25
    assert not cfg.uses_default_fallbacks


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("TestingTorNetwork true", "bad value for TestingTorNetwork: boolean must be 0 or 1"),
        ("ClientUseIPv6 yes", "boolean must be 0 or 1"),
        ("MaxCircuitDirtiness 5", "between 10 seconds and 30 days"),
        ("MaxCircuitDirtiness 5 lightyears", "unknown time unit"),
        ("MaxClientCircuitsPending 0", "between 1 and 1024"),
        ("MaxClientCircuitsPending 2000", "between 1 and 1024"),
        ("NumEntryGuards -1", "not a non-negative integer"),
        ("CircuitStreamTimeout 5", "at least 10 seconds"),
        ("LogTimeGranularity 300 msec", "divisor or multiple"),
        ("SafeLogging maybe", "boolean must be 0 or 1"),
        ("DataDirectory", "empty path"),
    ],
)
def test_malformed_values_name_option_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, f"# first\n{line}\n")
    assert f"{tmp_path / 'torrc'}:2:" in str(info.value)
    assert line.split()[0] in str(info.value)


def test_command_line_wins_and_lists_replace(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "SocksPort 9050\nSocksPort 9051\nMaxCircuitDirtiness 20 minutes\n",
        "--SocksPort",
        "9150",
        "--MaxCircuitDirtiness",
        "30",
    )
    assert [p.port for p in cfg.socks_ports] == [9150]
    assert cfg.max_circuit_dirtiness == 30


def test_plus_appends_and_slash_clears(tmp_path: Path) -> None:
    cfg = load(tmp_path, "SocksPort 9050\n", "+SocksPort", "9150")
    assert [p.port for p in cfg.socks_ports] == [9050, 9150]
    cfg = load(tmp_path, "Log info stdout\n", "/Log")
    assert cfg.logs == TorConfig().logs  # cleared: the default applies
    with pytest.raises(ConfigError, match="takes no value"):
        load(tmp_path, "/Log notice stdout\n")


def test_defaults_torrc_is_lowest_priority(tmp_path: Path) -> None:
    defaults = torrc(tmp_path, "SocksPort 1111\nNewCircuitPeriod 99\n", "defaults")
    cfg = load(tmp_path, "SocksPort 2222\n", "--defaults-torrc", defaults)
    assert [p.port for p in cfg.socks_ports] == [2222] and cfg.new_circuit_period == 99


def test_repeated_singleton_last_wins_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="puretor.config"):
        cfg = load(tmp_path, "SocksTimeout 10\nSocksTimeout 20\n")
    assert cfg.socks_timeout == 20
    assert "more than once" in caplog.text


def test_missing_torrc(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(["-f", missing])
    assert load_config(["-f", missing, "--ignore-missing-torrc"]) == TorConfig()
    assert load_config(["--allow-missing-torrc", "-f", missing]) == TorConfig()


def test_default_torrc_location_is_read_if_present(tmp_path: Path) -> None:
    path = tmp_path / "xdg-config" / "puretor" / "torrc"
    path.parent.mkdir(parents=True)
    path.write_text("SocksPort 9999\n")
    assert [p.port for p in load_config([]).socks_ports] == [9999]


def test_unknown_option_in_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"torrc:3: unknown option 'SocksPorts'"):
        load(tmp_path, "\n\nSocksPorts 9050\n")


def test_dir_authorities_and_fallbacks(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"DirAuthority {AUTH_LINE}\nFallbackDir {FALLBACK_LINE}\n")
    (auth,) = cfg.dir_authorities
    assert (auth.nickname, auth.address, auth.or_port, auth.dir_port) == (
        "test000a",
        "127.0.0.1",
        5000,
        7000,
    )
    assert auth.rsa_id == bytes.fromhex("BEEF" * 10)
    (fallback,) = cfg.fallback_dirs
    assert (fallback.address, fallback.or_port) == ("127.0.0.1", 5001)
    assert not cfg.uses_default_fallbacks


def test_bad_dir_authority_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"torrc:2: bad DirAuthority line"):
        load(tmp_path, f"DirAuthority {AUTH_LINE}\nDirAuthority nonsense\n")
    with pytest.raises(ConfigError, match=r"torrc:1: bad FallbackDir line"):
        load(tmp_path, "FallbackDir 1.2.3.4:80\n")


def test_dir_parsers_are_imported_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    fake = types.ModuleType("puretor.dir.authorities")
    fake.parse_dir_authority_line = lambda value: ("auth", value)  # type: ignore[attr-defined]
    fake.parse_fallback_dir_line = lambda value: ("fb", value)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "puretor.dir.authorities", fake)
    import puretor.dir

    monkeypatch.setattr(puretor.dir, "authorities", fake, raising=False)
    cfg = load(tmp_path, "DirAuthority x y\nFallbackDir z\n")
    assert cfg.dir_authorities == (("auth", "x y"),)
    assert cfg.fallback_dirs == (("fb", "z"),)


def test_testing_tor_network_needs_dir_authorities(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TestingTorNetwork .* DirAuthority"):
        load(tmp_path, "TestingTorNetwork 1\n")


def test_testing_tor_network_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"TestingTorNetwork 1\nDirAuthority {AUTH_LINE}\n")
    assert cfg.testing_tor_network
    assert cfg.enforce_distinct_subnets is False
    assert cfg.client_reject_internal_addresses is False
    assert cfg.client_dns_reject_internal_addresses is False
    # ...but an explicit setting wins.
    cfg = load(
        tmp_path,
        f"TestingTorNetwork 1\nDirAuthority {AUTH_LINE}\nEnforceDistinctSubnets 1\n",
    )
    assert cfg.enforce_distinct_subnets is True
    # TorConfig built in code resolves None the same way.
    assert not TorConfig(testing_tor_network=True).distinct_subnets


def test_no_ip_family_left(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ClientUseIPv4 and ClientUseIPv6"):
        load(tmp_path, "ClientUseIPv4 0\nClientUseIPv6 0\n")
