"""Socks4Proxy, Socks5Proxy (+Username/Password), HTTPSProxy (+Authenticator): option rules
as C tor's options_validate, and the requests and replies of proto/pt.py."""

from __future__ import annotations

import pytest

from puretor.config import TorConfig
from puretor.errors import ConfigError
from puretor.proto.pt import (
    Socks5Error,
    http_connect_reply,
    http_connect_request,
    socks4_reply,
    socks4_request,
)


def test_proxy_options() -> None:
    cfg = TorConfig.from_options(Socks5Proxy="127.0.0.1", Socks5ProxyUsername="u",
                                 Socks5ProxyPassword="p")  # fmt: skip
    assert cfg.socks5_proxy == ("127.0.0.1", 1080)
    assert TorConfig.from_options(HTTPSProxy="[::1]").https_proxy == ("::1", 443)
    assert TorConfig.from_options(Socks4Proxy="10.0.0.1:9").socks4_proxy == ("10.0.0.1", 9)
    assert TorConfig.from_options(HTTPSProxy="10.0.0.1:3128").option_lines("HTTPSProxy") == [
        "10.0.0.1:3128"
    ]
    for bad, message in [
        ({"Socks5Proxy": "1.2.3.4", "HTTPSProxy": "1.2.3.4"}, "more than one proxy type"),
        ({"Socks5ProxyUsername": "u"}, "must be included"),
        ({"Socks5ProxyPassword": "p"}, "must be included"),
        ({"Socks5ProxyUsername": "u" * 256, "Socks5ProxyPassword": "p"}, "between 1 and 255"),
        ({"HTTPSProxyAuthenticator": "x" * 512}, "too long"),
        ({"Socks5Proxy": "proxy.example"}, "IP"),
        ({"Socks5Proxy": "1.2.3.4", "ClientTransportPlugin": "obfs4 exec /x"}, "TOR_PT_PROXY"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TorConfig.from_options(**bad)  # type: ignore[arg-type]


def test_socks4() -> None:
    assert socks4_request("127.1.0.1", 9001) == b"\x04\x01\x23\x29\x7f\x01\x00\x01\x00"
    assert socks4_reply(b"\x00\x5a" + bytes(5)) is None
    assert socks4_reply(b"\x00\x5a" + bytes(6)) == 8
    with pytest.raises(Socks5Error, match="refused"):
        socks4_reply(b"\x00\x5b" + bytes(6))
    with pytest.raises(Socks5Error, match="IPv4"):
        socks4_request("::1", 1)


def test_http_connect() -> None:
    assert http_connect_request("127.1.0.1", 9001) == b"CONNECT 127.1.0.1:9001 HTTP/1.0\r\n\r\n"
    assert http_connect_request("::1", 9001, "u:p") == (
        b"CONNECT [::1]:9001 HTTP/1.1\r\nHost: [::1]:9001\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n\r\n"
    )
    ok = b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n"
    assert http_connect_reply(ok[:-2]) is None
    assert http_connect_reply(ok) == len(ok)
    with pytest.raises(Socks5Error, match="407"):
        http_connect_reply(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    with pytest.raises(Socks5Error, match="no HTTP status line"):
        http_connect_reply(b"SSH-2.0-OpenSSH\r\n\r\n")
