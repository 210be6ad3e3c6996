"""The other doors' configuration and pure parts: HTTPTunnelPort/DNSPort/TransPort/MetricsPort
options, the automap address map, MetricsPortPolicy, TransPort's original destination."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import subprocess

import pytest

from puretor.config import TorConfig
from puretor.config.values import policy_permits_default_reject
from puretor.errors import ConfigError
from puretor.path.addressmap import AddressMap, is_automapped_suffix


def test_ports_are_off_by_default_and_parse_like_socks_port() -> None:
    cfg = TorConfig()
    assert cfg.http_tunnel_ports == cfg.dns_ports == cfg.trans_ports == cfg.metrics_ports == ()
    assert not cfg.automap_hosts_on_resolve
    assert cfg.automap_hosts_suffixes == (".exit", ".onion")
    cfg = TorConfig.from_options(
        HTTPTunnelPort=["9080 IsolateDestAddr", "[::1]:auto SessionGroup=3"],
        DNSPort="127.0.0.2:9053 NoIsolateClientAddr",
        TransPort="9040",
        MetricsPort="9035 prometheus",
        MetricsPortPolicy="accept 127.0.0.1, reject *",
    )
    assert cfg.http_tunnel_ports[0].isolate_dest_addr and cfg.http_tunnel_ports[1].port == "auto"
    assert cfg.http_tunnel_ports[1].session_group == 3
    assert not cfg.dns_ports[0].isolate_client_addr and cfg.dns_ports[0].address == "127.0.0.2"
    assert cfg.trans_ports[0].port == 9040 and cfg.metrics_ports[0].port == 9035
    assert cfg.option_lines("HTTPTunnelPort") == ["127.0.0.1:9080 IsolateDestAddr",
                                                 "[::1]:auto SessionGroup=3"]  # fmt: skip
    assert cfg.option_lines("MetricsPort") == ["127.0.0.1:9035 prometheus"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"HTTPTunnelPort": "9080 Bogus"}, "unknown HTTPTunnelPort flag"),
        ({"DNSPort": ["9053", "0"]}, "nonzero DNSPort along with 'DNSPort 0'"),
        ({"MetricsPort": "9035 json"}, "unknown MetricsPort format"),
        ({"VirtualAddrNetworkIPv4": "10.0.0.0/24"}, "too few addresses"),
        ({"VirtualAddrNetworkIPv6": "10.0.0.0/8"}, "not an IPv6 network"),
        ({"AutomapHostsSuffixes": ".onion,bad/suffix"}, "not a host name suffix"),
        ({"NATDPort": "9041"}, "not supported by puretor"),
    ],
)
def test_bad_values_are_refused(options: dict[str, str | list[str]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TorConfig.from_options(**options)


def test_automap_gives_stable_unused_addresses_in_the_network() -> None:
    amap = AddressMap(ipaddress.IPv4Network("10.192.0.0/16"), ipaddress.IPv6Network("fc00::/7"))
    a = amap.automap("ABC.onion")
    assert ipaddress.ip_address(a) in ipaddress.ip_network("10.192.0.0/16")
    assert amap.automap("abc.onion.") == a  # case and the final dot do not matter
    assert amap.lookup(a) == "abc.onion" and amap.lookup("10.0.0.1") is None
    v6 = amap.automap("abc.onion", 6)
    assert ipaddress.ip_address(v6) in ipaddress.ip_network("fc00::/7")
    assert amap.lookup(f"[{v6}]") == "abc.onion"
    others = {amap.automap(f"n{i}.onion") for i in range(500)}
    assert len(others) == 500 and a not in others
    assert all(not x.endswith((".0", ".255")) for x in others)


def test_a_full_network_is_an_error_not_a_reuse() -> None:
    amap = AddressMap(ipaddress.IPv4Network("10.0.0.0/30"))
    with pytest.raises(ValueError, match="no free virtual address"):
        for i in range(10):
            amap.automap(f"n{i}.onion")


@pytest.mark.parametrize(
    ("name", "suffixes", "expected"),
    [
        ("x.onion", (".onion",), True),
        ("X.ONION.", (".onion",), True),
        ("onion.example", (".onion",), False),
        ("a.exit", (".exit", ".onion"), True),
        ("target.test", (".",), True),
        ("target.test", ("test",), True),
        ("notatest", ("test",), False),
    ],
)
def test_automap_suffixes(name: str, suffixes: tuple[str, ...], expected: bool) -> None:
    assert is_automapped_suffix(name, suffixes) is expected


def test_metrics_port_policy_rejects_what_it_does_not_accept() -> None:
    cfg = TorConfig.from_options(MetricsPortPolicy="accept 127.0.0.1, accept 10.0.0.0/8")
    rules = cfg.metrics_port_policy
    assert policy_permits_default_reject(rules, "127.0.0.1")
    assert policy_permits_default_reject(rules, "10.1.2.3")
    assert not policy_permits_default_reject(rules, "127.0.0.2")
    assert not policy_permits_default_reject((), "127.0.0.1")  # no policy: nobody


def test_client_maps_virtual_addresses_back_to_names() -> None:
    from puretor.client import TorClient

    tor = TorClient(TorConfig.from_options(VirtualAddrNetworkIPv4="10.9.0.0/16"))
    addr = tor.automap_address("abc.onion")
    assert tor.address_map.lookup(addr) == "abc.onion"
    assert ipaddress.ip_address(addr) in ipaddress.ip_network("10.9.0.0/16")
    asyncio.run(tor.aclose())


def test_transport_finds_no_original_destination_on_a_plain_connection() -> None:
    from puretor.app.transport import original_destination

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with client, conn:
            assert original_destination(conn) is None


def test_metrics_exposition_passes_promtool() -> None:
    from puretor.app.dnsport import DnsStats
    from puretor.app.metrics import render
    from puretor.app.socks import SocksServerStats
    from puretor.client import TorClient
    from puretor.errors import StreamRefused

    class Listener:
        def __init__(self, stats: object) -> None:
            self.stats = stats

    tor = TorClient(TorConfig())
    socks = SocksServerStats()
    socks.stream_failed(StreamRefused("x", 4))
    socks.stream_failed(TimeoutError())
    dns = DnsStats()
    dns.rcodes[3] += 2
    text = render(tor, [("socks", Listener(socks)), ("http_tunnel", Listener(SocksServerStats())),
                        ("dns", Listener(dns))])  # fmt: skip
    asyncio.run(tor.aclose())
    assert 'puretor_port_stream_failures_total{port_type="socks",reason="EXITPOLICY"} 1' in text
    assert 'puretor_port_stream_failures_total{port_type="socks",reason="TIMEOUT"} 1' in text
    assert 'puretor_dns_responses_total{rcode="NXDOMAIN"} 2' in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian's prometheus)")
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_onion_names_are_never_sent_to_an_exit_for_resolving() -> None:
    from puretor.client import TorClient
    from puretor.errors import StreamRefused

    async def main() -> None:
        tor = TorClient(TorConfig())
        try:
            for call in (tor.resolve, tor.resolve_with_ttl):
                with pytest.raises(StreamRefused, match="onion addresses cannot be resolved"):
                    await call("a" * 56 + ".onion")  # refused before any bootstrap
        finally:
            await tor.aclose()

    asyncio.run(main())
