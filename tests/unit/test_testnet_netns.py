"""The sealed namespace the whole test run lives in (set up by tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest

from puretor.testnet import netns

pytestmark = pytest.mark.skipif(
    not netns.is_sealed(), reason="tests/conftest.py could not enter a private namespace"
)


def test_only_loopback() -> None:
    assert netns.interfaces() == ["lo"]
    assert netns.is_sealed()


def test_direct_connection_shows_127_0_0_1_bound_one_shows_its_address() -> None:
    # The premise of telling exits from direct connections: 198.18/15 is local, with
    # 127.0.0.1 as preferred source, unless the client binds (as relays do) its own address.
    with socket.socket() as server:
        server.bind(("198.18.0.99", 0))
        server.listen()
        addr = server.getsockname()
        with socket.create_connection(addr, timeout=5):
            conn, peer = server.accept()
            conn.close()
        assert peer[0] == "127.0.0.1"
        with socket.socket() as bound:
            bound.bind(("127.8.0.1", 0))
            bound.connect(addr)
            conn, peer = server.accept()
            conn.close()
        assert peer[0] == "127.8.0.1"


def test_wrap_is_identity_for_the_current_namespace() -> None:
    assert netns.wrap(None, ["curl", "x"]) == ["curl", "x"]
    assert netns.wrap("no-such-netns-here", ["curl"]) == [
        "ip",
        "netns",
        "exec",
        "no-such-netns-here",
        "curl",
    ]
