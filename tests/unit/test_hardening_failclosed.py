"""Hardening: the channel layer fails closed at run time (no network needed).

`ChannelManager(allow=...)` asks before every connection it would open and refuses with a
`ChannelError` - without connecting - when the check says no or breaks; `TorClient` always
installs a check that vouches only for configured authorities/fallbacks and for relays listed
at that address and ORPort in the current, reasonably live consensus.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.client import TorClient
from puretor.config import TorConfig
from puretor.dir.authorities import parse_dir_authority_line, parse_fallback_dir_line
from puretor.dir.netdir import NetDir, Relay
from puretor.errors import ChannelError

AUTH = parse_dir_authority_line(
    "auth1 orport=9001 v3ident=E46DFCFF2E729DA93B308B9329724BCE48A5FA17 "
    "127.1.0.1:9030 CE47DF966F18999BEBD40C3365EB8BE223D6C138"
)
FALLBACK = parse_fallback_dir_line(
    "127.50.0.1:80 orport=443 id=0123456789ABCDEF0123456789ABCDEF01234567"
)
GUARD = Relay(
    nickname="guard1",
    rsa_id=bytes.fromhex("AA" * 20),
    address="127.4.0.1",
    or_port=9001,
    dir_port=0,
    flags=frozenset({"Guard", "Running", "Valid"}),
    bandwidth=1000,
    ipv6=("2001:db8::4", 9001),
)


class _Listener:
    """A loopback TCP listener that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    lst = _Listener()
    try:
        yield lst
    finally:
        lst.close()


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.active = True

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event == "puretor.channel.connect":
            self.seen.append(args)


_EVENTS = _Events()
sys.addaudithook(_EVENTS.hook)


@pytest.fixture
def events() -> Iterator[_Events]:
    _EVENTS.seen.clear()
    yield _EVENTS
    _EVENTS.seen.clear()


def _target(port: int, name: str = "x") -> ChannelTarget:
    return ChannelTarget("127.0.0.1", port, bytes(20), None, name)


def test_refused_target_is_never_connected(listener: _Listener, events: _Events) -> None:
    asked: list[ChannelTarget] = []

    def allow(target: ChannelTarget) -> str | None:
        asked.append(target)
        return "not a relay"

    async def main() -> ChannelManager:
        mgr = ChannelManager(allow=allow)
        with pytest.raises(ChannelError, match="refusing to connect to x .*: not a relay"):
            await mgr.get_channel(_target(listener.port))
        return mgr

    mgr = asyncio.run(main())
    assert mgr.refused == 1 and mgr.connects == 0
    assert asked and asked[0].or_port == listener.port
    assert events.seen == []  # the connect event is never raised
    assert listener.accepted == 0


def test_a_broken_check_refuses(listener: _Listener) -> None:
    def allow(target: ChannelTarget) -> str | None:
        raise RuntimeError("netdir exploded")

    async def main() -> None:
        mgr = ChannelManager(allow=allow)
        with pytest.raises(ChannelError, match="the connection check failed"):
            await mgr.get_channel(_target(listener.port))

    asyncio.run(main())
    assert listener.accepted == 0


def test_allowed_target_is_connected_and_announced(listener: _Listener, events: _Events) -> None:
    async def main() -> None:
        mgr = ChannelManager(allow=lambda t: None)
        # The listener closes at once: the link handshake fails, but a connection was made.
        with pytest.raises(ChannelError):
            await mgr.get_channel(_target(listener.port))

    asyncio.run(main())
    assert events.seen == [("127.0.0.1", listener.port, "00" * 20)]
    deadline = 50
    while listener.accepted == 0 and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    assert listener.accepted == 1


# --------------------------------------------------------------------------- TorClient's check


class _State:
    def __init__(self, netdir: NetDir | None) -> None:
        self._netdir = netdir

    def netdir(self, now: float | None = None) -> NetDir | None:
        return self._netdir


def _netdir(*relays: Relay) -> NetDir:
    t = datetime.now(UTC)
    return NetDir(t, t, t, 3600, {}, {}, tuple(relays))


def _client(tmp_path: Path, netdir: NetDir | None) -> TorClient:
    config = TorConfig(
        data_directory=tmp_path,
        dir_authorities=(AUTH,),
        fallback_dirs=(FALLBACK,),
        use_default_fallback_dirs=False,
    )
    tor = TorClient(config)
    tor._dirmgr.state = _State(netdir)  # type: ignore[assignment]
    return tor


def test_client_check_before_any_consensus(tmp_path: Path) -> None:
    tor = _client(tmp_path, None)
    allowed = tor._channel_allowed
    assert allowed(ChannelTarget(AUTH.address, AUTH.or_port, AUTH.rsa_id)) is None
    assert allowed(ChannelTarget(FALLBACK.address, FALLBACK.or_port, FALLBACK.rsa_id)) is None
    # An authority's identity elsewhere, or its address with another identity: no.
    assert allowed(ChannelTarget("127.9.9.9", AUTH.or_port, AUTH.rsa_id))
    assert allowed(ChannelTarget(AUTH.address, AUTH.or_port, bytes(20)))
    assert allowed(ChannelTarget(AUTH.address, AUTH.dir_port, AUTH.rsa_id))
    # A relay, before there is a consensus to vouch for it: no.
    why = allowed(ChannelTarget(GUARD.address, GUARD.or_port, GUARD.rsa_id))
    assert why is not None and "no usable consensus" in why


def test_client_check_with_a_consensus(tmp_path: Path) -> None:
    tor = _client(tmp_path, _netdir(GUARD))
    allowed = tor._channel_allowed
    assert allowed(ChannelTarget(GUARD.address, GUARD.or_port, GUARD.rsa_id)) is None
    assert allowed(ChannelTarget("2001:db8::4", 9001, GUARD.rsa_id)) is None  # its `a` line
    assert "another address" in (allowed(ChannelTarget("198.18.0.10", 80, GUARD.rsa_id)) or "")
    assert "another address" in (allowed(ChannelTarget(GUARD.address, 443, GUARD.rsa_id)) or "")
    assert "not a configured" in (
        allowed(ChannelTarget(GUARD.address, GUARD.or_port, bytes(20))) or ""
    )
    assert allowed(ChannelTarget(AUTH.address, AUTH.or_port, AUTH.rsa_id)) is None


def test_client_installs_its_check(tmp_path: Path, listener: _Listener) -> None:
    tor = _client(tmp_path, _netdir(GUARD))
    assert tor._chanmgr.allow is not None

    async def main() -> None:
        with pytest.raises(ChannelError, match="refusing to connect"):
            await tor._chanmgr.get_channel(_target(listener.port, "destination"))

    asyncio.run(main())
    assert listener.accepted == 0 and tor._chanmgr.refused == 1


def test_stale_consensus_vouches_for_nobody(tmp_path: Path) -> None:
    """A consensus the client holds vouches for its relays while reasonably live (up to
    24 h past valid-until) and for nobody after that; directory sources stay allowed."""
    from datetime import timedelta

    from puretor.dir.consensus import parse_consensus
    from puretor.dir.state import DirState
    from puretor.dir.synth import synth_network

    def held_since(hours: float) -> tuple[TorClient, Relay]:
        va = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours)
        net = synth_network(12, 3, n_authorities=3, valid_after=va)
        state = DirState(net.authority_list)
        # (The synthetic certificates carry fixed dates: skip verification, it is not what
        # this test is about; DirState.netdir applies the liveness rule by itself.)
        state.consensus = parse_consensus(net.consensus)
        nd = state.netdir(net.now)
        assert nd is not None
        tor = _client(tmp_path, None)
        tor._dirmgr.state = state
        return tor, nd.relays[0]

    tor, relay = held_since(10)  # expired, still reasonably live
    assert tor._channel_allowed(ChannelTarget(relay.address, relay.or_port, relay.rsa_id)) is None
    tor, relay = held_since(30)  # more than 24 h past valid-until
    why = tor._channel_allowed(ChannelTarget(relay.address, relay.or_port, relay.rsa_id))
    assert why is not None and "no usable consensus" in why
    assert tor._channel_allowed(ChannelTarget(AUTH.address, AUTH.or_port, AUTH.rsa_id)) is None
