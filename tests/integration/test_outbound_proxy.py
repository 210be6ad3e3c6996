"""Socks4Proxy, Socks5Proxy (+Username/Password) and HTTPSProxy (+Authenticator): a client
that cannot reach any relay itself (the network's censor) bootstraps and fetches through an
outbound proxy, and every connection it makes goes to that proxy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from proxyserver import ProxyServer
from test_bridges import _censored, _channel_targets
from test_zz_hardening_helpers import start_daemon

from puretor.testnet.network import TestNetwork

CASES = {
    "socks5": ["Socks5Proxy 127.0.0.1:{port}", "Socks5ProxyUsername u", "Socks5ProxyPassword p"],
    "socks4": ["Socks4Proxy 127.0.0.1:{port}"],
    "https": ["HTTPSProxy 127.0.0.1:{port}", "HTTPSProxyAuthenticator u:p"],
}


@pytest.mark.options(
    "Socks4Proxy",
    "Socks5Proxy",
    "Socks5ProxyUsername",
    "Socks5ProxyPassword",
    "HTTPSProxy",
    "HTTPSProxyAuthenticator",
)
@pytest.mark.parametrize("kind", list(CASES))
def test_everything_goes_through_the_proxy(testnet: TestNetwork, tmp_path: Path, kind: str) -> None:
    info = testnet.info
    wrap = _censored(info)  # the client cannot reach the relays; the proxy (us) can
    auth = {"user": "u", "password": "p"} if kind != "socks4" else {}
    before = testnet.dropped_packets()
    with ProxyServer(**auth) as proxy:
        extra = ["SocksPort 127.0.0.1:auto", "Log info stdout"]
        extra += [line.format(port=proxy.port) for line in CASES[kind]]
        client = start_daemon(info, tmp_path, extra, wrap=wrap)
        try:
            assert "Bootstrapped 3% (conn_proxy): Connecting to proxy" in client.log_text()
            f = info["targets"]["files"]["1MiB"]
            body = client.curl(f["urls"]["http_host"])
            assert hashlib.sha256(body).hexdigest() == f["sha256"]
        finally:
            client.stop()
        assert proxy.refused == 0
        relays = {(r["address"], r["orport"]) for r in info["relays"]}
        asked = {(h, p) for h, p, _ in proxy.destinations}
        assert asked and asked <= relays, asked - relays
        assert {proto for _, _, proto in proxy.destinations} == {kind}
    # The client's own TCP connections: only to the proxy.
    tcp = {(a, p) for a, p, what in _channel_targets(tmp_path) if what == "tcp"}
    assert tcp == {("127.0.0.1", proxy.port)}
    assert testnet.dropped_packets() == before
