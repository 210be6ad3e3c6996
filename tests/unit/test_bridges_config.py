"""UseBridges and Bridge lines: parsing as C tor's parse_bridge_line, the option rules of
options_validate, and the channel allow-check that lets only configured bridges through."""

from __future__ import annotations

import pytest

from puretor.aio.bridges import BridgeSet
from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.config import TorConfig
from puretor.config.values import format_bridge_line, parse_bridge_line
from puretor.errors import ConfigError

FP = "A" * 40
FP2 = "B" * 40


def test_parse_plain_and_transport_lines() -> None:
    b = parse_bridge_line(f"127.12.0.1:9001 {FP}")
    assert (b.address, b.port, b.fingerprint, b.transport, b.args) == (
        "127.12.0.1", 9001, FP, None, ()
    )  # fmt: skip
    grouped = parse_bridge_line(
        "127.12.0.1:9001 " + " ".join(FP[i : i + 4] for i in range(0, 40, 4))
    )
    assert grouped.fingerprint == FP
    assert parse_bridge_line("192.0.2.1").port == 443  # C tor's default
    o = parse_bridge_line(f"obfs4 [2001:db8::1]:9002 {FP} cert=abc+/= iat-mode=0")
    assert (o.address, o.port, o.transport) == ("2001:db8::1", 9002, "obfs4")
    assert o.args == (("cert", "abc+/="), ("iat-mode", "0"))
    assert format_bridge_line(o) == f"obfs4 [2001:db8::1]:9002 {FP} cert=abc+/= iat-mode=0"
    assert parse_bridge_line("obfs4 192.0.2.1:1 cert=x").rsa_id is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "Too few arguments"),
        ("obfs4", "Too few items"),
        ("nonsense:99", "Error parsing Bridge address"),
        ("192.0.2.1:70000", "Error parsing Bridge address"),
        ("192.0.2.1:9001 ABCD", "wrong length"),
        ("192.0.2.1:9001 " + "Z" * 40, "Unable to decode"),
        (f"obfs4 192.0.2.1:9001 {FP} novalue", "not a k=v item"),
    ],
)
def test_bad_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bridge_line(line)


def test_option_rules() -> None:
    cfg = TorConfig.from_options(UseBridges=1, Bridge=f"127.12.0.1:9001 {FP}")
    assert cfg.use_bridges and cfg.bridges[0].fingerprint == FP
    assert cfg.option_lines("Bridge") == [f"127.12.0.1:9001 {FP}"]
    with pytest.raises(ConfigError, match="must specify at least one bridge"):
        TorConfig.from_options(UseBridges=1)
    with pytest.raises(ConfigError, match="requires also setting UseEntryGuards"):
        TorConfig.from_options(UseBridges=1, UseEntryGuards=0, Bridge=f"127.12.0.1:9001 {FP}")
    # Without a fingerprint: the bridge's identity is learned from the channel.
    assert TorConfig.from_options(UseBridges=1, Bridge="127.12.0.1:9001").bridges[0].rsa_id is None
    with pytest.raises(ConfigError, match="missing a ClientTransportPlugin"):
        TorConfig.from_options(UseBridges=1, Bridge=f"obfs4 127.12.0.1:9002 {FP} cert=x")
    with pytest.raises(ConfigError, match="Bridge"):
        TorConfig.from_options(Bridge="nonsense")


def test_allow_check_admits_only_configured_bridges() -> None:
    cfg = TorConfig.from_options(UseBridges=1, Bridge=f"127.12.0.1:9001 {FP}")
    bridges = BridgeSet(cfg.bridges, ChannelManager())
    ok = ChannelTarget("127.12.0.1", 9001, bytes.fromhex(FP))
    assert bridges.allows(ok) is None
    for bad in (
        ChannelTarget("127.12.0.1", 9001, bytes.fromhex(FP2)),  # other identity
        ChannelTarget("127.12.0.1", 9002, bytes.fromhex(FP)),  # other port
        ChannelTarget("127.1.0.1", 9001, bytes.fromhex(FP)),  # an authority's address
    ):
        assert bridges.allows(bad) is not None


def test_torclient_with_bridges_refuses_authorities(tmp_path: object) -> None:
    from puretor.client import TorClient

    cfg = TorConfig.from_options(
        UseBridges=1,
        Bridge=f"127.12.0.1:9001 {FP}",
        DataDirectory=str(tmp_path),
        DirAuthority="auth1 orport=9001 v3ident=" + "C" * 40 + " 127.1.0.1:9030 " + "D" * 40,
        TestingTorNetwork=1,
    )
    client = TorClient(cfg)
    auth = ChannelTarget("127.1.0.1", 9001, bytes.fromhex("D" * 40))
    assert "only configured bridges" in (client._channel_allowed(auth) or "")
    assert client._channel_allowed(ChannelTarget("127.12.0.1", 9001, bytes.fromhex(FP))) is None


def test_transport_plugin_lines() -> None:
    from puretor.config.values import format_transport_plugin, parse_transport_plugin

    p = parse_transport_plugin("obfs4,meek_lite exec /usr/bin/obfs4proxy -enableLogging")
    assert (p.transports, p.kind, p.argv) == (
        ("obfs4", "meek_lite"), "exec", ("/usr/bin/obfs4proxy", "-enableLogging")
    )  # fmt: skip
    assert format_transport_plugin(p) == "obfs4,meek_lite exec /usr/bin/obfs4proxy -enableLogging"
    s = parse_transport_plugin("obfs4 socks5 127.0.0.1:1080")
    assert (s.kind, s.address) == ("socks5", ("127.0.0.1", 1080))
    for bad in ("obfs4 exec", "obfs-4 exec /x", "obfs4 socks5 nohost", "obfs4 http 1.2.3.4:5"):
        with pytest.raises(ValueError):
            parse_transport_plugin(bad)
    cfg = TorConfig.from_options(
        UseBridges=1,
        Bridge=f"obfs4 127.13.0.1:9002 {FP} cert=x iat-mode=0",
        ClientTransportPlugin="obfs4 exec /usr/bin/obfs4proxy",
    )
    assert cfg.bridges[0].transport == "obfs4" and cfg.transport_plugins[0].kind == "exec"


def test_a_bridge_without_fingerprint_is_pinned_once_learned() -> None:
    cfg = TorConfig.from_options(UseBridges=1, Bridge="127.12.0.1:9001")
    bridges = BridgeSet(cfg.bridges, ChannelManager())
    [line] = cfg.bridges
    assert bridges.target_for(line).rsa_id == b""  # any identity, proved by the channel
    assert bridges.allows(ChannelTarget("127.12.0.1", 9001, bytes.fromhex(FP2))) is None
    bridges.learned[line] = bytes.fromhex(FP)
    assert bridges.target_for(line).rsa_id == bytes.fromhex(FP)
    assert bridges.allows(ChannelTarget("127.12.0.1", 9001, bytes.fromhex(FP))) is None
    assert bridges.allows(ChannelTarget("127.12.0.1", 9001, bytes.fromhex(FP2))) is not None
    assert bridges.allows(ChannelTarget("127.1.0.1", 9001, bytes.fromhex(FP))) is not None


def test_reload_keeps_how_we_reach_tor(caplog: pytest.LogCaptureFixture) -> None:
    """SIGHUP with changed bridge or proxy options: the old ones stay (with a warning), so a
    newly set UseBridges never looks applied while connections still go direct."""
    from puretor.app.daemon import _keep_first_hop_options

    old = TorConfig.from_options(SafeSocks=0)
    new = TorConfig.from_options(SafeSocks=1, UseBridges=1, Bridge=f"127.12.0.1:9001 {FP}")
    kept = _keep_first_hop_options(old, new)
    assert kept.safe_socks and not kept.use_bridges and kept.bridges == ()
    assert "UseBridges, Bridge changed: that takes a restart" in caplog.text
    assert _keep_first_hop_options(new, new) is new
