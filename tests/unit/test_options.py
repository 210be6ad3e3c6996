"""Every option tor-client accepts does something: the effects that need no network.

The options table itself (`puretor.config.OPTIONS`), options C tor has and puretor does not,
and the pieces each option drives: address families (ClientUseIPv4/IPv6,
ClientPreferIPv6ORPort), internal addresses (ClientRejectInternalAddresses,
ClientDNSRejectInternalAddresses), the stream-timeout schedule (CircuitStreamTimeout),
SocksPolicy, guard counts (NumEntryGuards, NumPrimaryGuards), LogTimeGranularity.
Effects that need relays are in tests/integration/test_options_effects.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest

from puretor.app.daemon import CTorFormatter
from puretor.client import TorClient
from puretor.config import OPTION_NAMES, OPTIONS, TorConfig, load_config
from puretor.config.ctor_names import CTOR_OBSOLETE, CTOR_OPTIONS
from puretor.config.values import parse_policy_entries, policy_permits
from puretor.errors import ConfigError, StreamRefused
from puretor.path.guards import GuardManager
from puretor.path.reachable import AddressFamilies, is_internal_address, is_local_hostname

T0 = 1_700_000_000.0


def load(tmp_path: Path, text: str) -> TorConfig:
    torrc = tmp_path / "torrc"
    torrc.write_text(text)
    return load_config(["-f", str(torrc)])


# -- the table ------------------------------------------------------------------------------


def test_every_option_is_a_c_tor_option_and_round_trips(tmp_path: Path) -> None:
    defaults = TorConfig()
    for name, spec in OPTIONS.items():
        assert name in CTOR_OPTIONS, f"{name} is not a C tor option"
        lines = spec.default_text(getattr(defaults, spec.attr))
        if spec.repeatable or name in ("DataDirectory",):
            continue
        # The default, written back as torrc text, reads as the default again.
        again = TorConfig.from_options(**{name: lines[0]}) if lines[0] else defaults
        assert getattr(again, spec.attr) == getattr(defaults, spec.attr), name
    assert set(OPTION_NAMES) == set(OPTIONS)


def test_list_torrc_options(capsys: pytest.CaptureFixture[str]) -> None:
    from puretor.app.daemon import run_daemon

    assert run_daemon(["--list-torrc-options"], version="x") == 0
    listed = capsys.readouterr().out.split()
    assert listed == list(OPTION_NAMES) and "SafeSocks" in listed


@pytest.mark.parametrize(
    "name", ["OutboundBindAddress", "DataDirectoryGroupReadable", "ExitNodes", "ORPort"]
)
def test_c_tor_options_we_lack_are_refused_as_not_supported(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=f"C tor option '{name}' is not supported by puretor"):
        load(tmp_path, f"{name.lower()} 1\n")


def test_every_c_tor_option_gets_a_clear_answer(tmp_path: Path) -> None:
    """Accepted, refused as "not supported", or skipped as obsolete - never "unknown"."""
    for name in sorted(CTOR_OPTIONS - set(OPTIONS)):
        with pytest.raises(ConfigError, match="not supported by puretor"):
            TorConfig.from_options(**{name: "1"})


def test_obsolete_options_are_skipped_with_c_tors_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert "WarnUnsafeSocks" in CTOR_OBSOLETE
    with caplog.at_level(logging.WARNING, logger="puretor"):
        cfg = load(tmp_path, "WarnUnsafeSocks 0\nSafeSocks 1\n")
    assert cfg.safe_socks
    assert "Skipping obsolete configuration option 'WarnUnsafeSocks'" in caplog.text


def test_client_dns_reject_internal_addresses_needs_a_private_network(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ClientDNSRejectInternalAddresses used for default"):
        load(tmp_path, "ClientDNSRejectInternalAddresses 0\n")


def test_socks_options_parse(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "SafeSocks 1\nTestSocks 1\nSocksPolicy accept 127.0.0.1, reject *\n"
        "SocksPolicy accept [::1]/128:*\nNumPrimaryGuards 4\n",
    )
    assert cfg.safe_socks and cfg.test_socks and cfg.num_primary_guards == 4
    assert len(cfg.socks_policy) == 3
    assert cfg.option_lines("SocksPolicy") == [
        "accept 127.0.0.1/32",
        "reject *",
        "accept [::1]/128",
    ]
    with pytest.raises(ConfigError, match="bad SocksPolicy line"):
        load(tmp_path, "SocksPolicy allow 1.2.3.4\n")


# -- SocksPolicy ----------------------------------------------------------------------------


def test_socks_policy_first_match_wins_and_unmatched_is_accepted() -> None:
    rules = parse_policy_entries("accept 127.0.0.1, reject 127.0.0.0/8, reject *6")
    assert policy_permits(rules, "127.0.0.1")
    assert not policy_permits(rules, "127.0.0.2")
    assert not policy_permits(rules, "::1")
    assert policy_permits(rules, "10.1.2.3")  # no rule matched: accepted (C tor)
    private = parse_policy_entries("reject private")
    assert not policy_permits(private, "192.168.1.1") and policy_permits(private, "8.8.8.8")
    assert policy_permits(parse_policy_entries("reject *"), "/run/tor.sock")  # not an IP peer


# -- address families and internal addresses ------------------------------------------------

V4, V6 = ("192.0.2.1", 9001), ("2001:db8::1", 9001)


def test_address_families_choose_the_first_hop_address() -> None:
    assert AddressFamilies().or_address(V4, V6) == V4  # auto prefers IPv4
    assert AddressFamilies(prefer_ipv6=True).or_address(V4, V6) == V6
    assert AddressFamilies(use_ipv4=False).or_address(V4, V6) == V6
    assert AddressFamilies(use_ipv4=False).or_address(V4, None) is None
    assert AddressFamilies(use_ipv6=False, prefer_ipv6=True).or_address(V4, V6) == V4
    assert AddressFamilies(prefer_ipv6=True).or_address(V4, None) == V4


def test_config_prefers_ipv6_when_ipv4_is_off(tmp_path: Path) -> None:
    assert not load(tmp_path, "").prefer_ipv6_orport
    assert load(tmp_path, "ClientPreferIPv6ORPort 1\n").prefer_ipv6_orport
    assert load(tmp_path, "ClientUseIPv4 0\n").prefer_ipv6_orport


def test_guards_without_an_allowed_address_are_never_chosen() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "path"))
    from path_netbuild import build_netdir, make_relay

    relays = [make_relay(i, flags={"Guard"}) for i in range(6)]
    relays += [
        make_relay(10 + i, flags={"Guard"}, ipv6=(f"2001:db8::{i + 1}", 443)) for i in range(6)
    ]
    netdir = build_netdir(relays + [make_relay(100 + i) for i in range(3)])
    mgr = GuardManager(rng=random.Random(3))
    mgr.families = AddressFamilies(use_ipv4=False)
    mgr.set_netdir(netdir, T0)
    chosen = {mgr.select_guard(T0)[0].rsa_id for _ in range(50)}
    assert chosen and all(netdir.by_rsa_id(r).ipv6 for r in chosen)  # type: ignore[union-attr]


def test_guard_counts_from_torrc_win_over_the_consensus() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "path"))
    from path_netbuild import build_netdir, make_relay

    relays = [make_relay(i, flags={"Guard"}) for i in range(40)] + [make_relay(100)]
    netdir = build_netdir(relays, params={"guard-n-primary-guards-to-use": 1})
    mgr = GuardManager(rng=random.Random(5))
    mgr.overrides.update(n_primary=4, n_primary_to_use=2)  # NumPrimaryGuards, NumEntryGuards
    mgr.set_netdir(netdir, T0)
    primary = mgr.primary_guards(T0)
    assert len(primary) == 4
    assert {mgr.select_guard(T0)[0].rsa_id for _ in range(200)} == set(primary[:2])


def test_internal_addresses_as_c_tor_has_them() -> None:
    for internal in ("127.0.0.1", "10.9.8.7", "192.168.0.1", "100.64.0.1", "169.254.1.1",
                     "172.31.255.255", "0.1.2.3", "::1", "::", "fe80::1", "fd00::5",
                     "::ffff:10.0.0.1", "[::1]"):  # fmt: skip
        assert is_internal_address(internal), internal
    for public in ("198.18.0.10", "8.8.8.8", "2001:db8::1", "172.32.0.1", "example.com"):
        assert not is_internal_address(public), public
    assert is_local_hostname("localhost") and is_local_hostname("printer.LOCAL.")
    assert not is_local_hostname("localhost.example") and not is_local_hostname("example.com")


@pytest.mark.parametrize("host", ["127.0.0.1", "192.168.1.1", "localhost", "nas.local", "[::1]"])
def test_client_refuses_internal_destinations_before_any_network(
    tmp_path: Path, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ClientRejectInternalAddresses (on by default): refused at once, nothing is sent."""

    async def main() -> None:
        tor = TorClient(TorConfig.from_options(DataDirectory=tmp_path / "d"))
        try:
            with pytest.raises(StreamRefused, match="ClientRejectInternalAddresses"):
                await tor.open_connection(host, 80)
            assert not tor.is_bootstrapped and tor.stats()["channels_opened"] == 0
        finally:
            await tor.aclose()

    asyncio.run(main())


def test_stream_timeout_schedule(tmp_path: Path) -> None:
    tor = TorClient(TorConfig.from_options(DataDirectory=tmp_path))
    assert [tor._stream_timeout(a) for a in range(4)] == [10, 10, 15, 15]  # C tor's schedule
    tor = TorClient(TorConfig.from_options(DataDirectory=tmp_path, CircuitStreamTimeout=25))
    assert [tor._stream_timeout(a) for a in range(3)] == [25, 25, 25]


# -- LogTimeGranularity ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granularity", "created", "expected"),
    [(1.0, 1_700_000_007.777, ":27.000"), (0.25, 1_700_000_007.777, ":27.750"),
     (0.001, 1_700_000_007.777, ":27.777"), (10.0, 1_700_000_007.777, ":20.000")],
)  # fmt: skip
def test_log_time_granularity(granularity: float, created: float, expected: str) -> None:
    record = logging.LogRecord("puretor", logging.WARNING, "x", 1, "hello", None, None)
    record.created, record.msecs = created, 777.0
    line = CTorFormatter(granularity).format(record)
    assert expected + " [warn] hello" in line
