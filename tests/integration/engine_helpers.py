"""Helpers for the engine tests that drive circuits through chosen relays directly.

`run` gives a coroutine a fresh `ChannelManager`; `fetch_directory` bootstraps a
`DirState` over BEGIN_DIR; `RelayNet` (the ``relays``/``net`` fixtures of those modules)
builds circuits through relays named like ``"guard1", "middle1", "exit1"`` - asking the
exit for congestion control exactly when `CircuitManager` would, if told to.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circmgr import congestion_control_for
from puretor.aio.circuit import HopSpec, TunnelHandle, build_circuit
from puretor.aio.dirclient import fetch_raw
from puretor.aio.stream import TorStreamTransport
from puretor.dir.authorities import Authority, parse_dir_authority_line
from puretor.dir.http import HttpResponseParser, build_request
from puretor.dir.netdir import NetDir, Relay
from puretor.dir.state import DirState
from puretor.errors import CircuitError, StreamRefused
from puretor.testnet import NetworkInfo, TestNetwork

T = TypeVar("T")


def run(coro_fn: Callable[[ChannelManager], Awaitable[T]], timeout: float = 120.0) -> T:
    """Run ``coro_fn(chanmgr)`` on a fresh event loop; every channel is closed afterwards."""

    async def main() -> T:
        chanmgr = ChannelManager()
        try:
            return await asyncio.wait_for(coro_fn(chanmgr), timeout)
        finally:
            chanmgr.close_all()
            await asyncio.sleep(0)  # let the transports close

    return asyncio.run(main())


# --------------------------------------------------------------------------- directory


def authorities(info: NetworkInfo) -> list[Authority]:
    return [
        parse_dir_authority_line(line.split(None, 1)[1]) for line in info["dir_authority_lines"]
    ]


def fast_hop(auth: Authority) -> HopSpec:
    """A CREATE_FAST first hop to an authority (no onion key needed)."""
    return HopSpec(
        ChannelTarget(auth.address, auth.or_port, auth.rsa_id, None, auth.nickname), None
    )


async def dir_get(handle: TunnelHandle, path: str) -> bytes:
    raw = await fetch_raw(handle, build_request(path), timeout=60, max_size=64 << 20)
    parser = HttpResponseParser()
    parser.feed(raw)
    resp = parser.finish()
    assert resp.status == 200, f"{path}: HTTP {resp.status} {resp.reason}"
    return resp.body


async def fetch_directory(chanmgr: ChannelManager, info: NetworkInfo) -> DirState:
    """Bootstrap a DirState over BEGIN_DIR on one CREATE_FAST circuit to auth1."""
    auths = authorities(info)
    state = DirState(auths)
    handle = await build_circuit(chanmgr, [fast_hop(auths[0])], timeout=30)
    deadline = time.monotonic() + 60
    while not state.have_enough_dir_info(time.time()):
        assert time.monotonic() < deadline, f"directory incomplete: {state.last_error}"
        reqs = state.next_requests(time.time())
        if not reqs:
            await asyncio.sleep(0.2)
            continue
        for req in reqs:
            body = await dir_get(handle, req.path)
            if req.kind == "consensus":
                state.add_consensus(body, time.time())
            elif req.kind == "certs":
                state.add_certs(body, time.time(), req.digests)
            else:
                state.add_microdescs(body, req.digests, time.time())
    handle.close()
    return state


def fetch_netdir(info: NetworkInfo) -> NetDir:
    nd = run(lambda cm: fetch_directory(cm, info)).netdir(time.time())
    assert nd is not None
    return nd


# --------------------------------------------------------------------------- circuits


def hop(relay: Relay) -> HopSpec:
    return HopSpec.for_relay(
        relay.address, relay.or_port, relay.rsa_id, relay.ed_id, relay.ntor_key, relay.nickname
    )


class RelayNet:
    """Relays of the network by nickname, from a verified NetDir.

    ``cc``: whether `build` asks the exit for congestion control by default.
    """

    def __init__(self, netdir: NetDir, *, cc: bool = True) -> None:
        self.netdir = netdir
        self.by_name = {r.nickname: r for r in netdir.relays}
        self.cc = cc

    def hops(self, *names: str) -> list[HopSpec]:
        return [hop(self.by_name[n]) for n in names]

    async def build(
        self, chanmgr: ChannelManager, *names: str, cc: bool | None = None, timeout: float = 30
    ) -> TunnelHandle:
        last = self.by_name[names[-1]]
        want_cc = self.cc if cc is None else cc
        params = congestion_control_for(self.netdir, last, internal=False) if want_cc else None
        return await build_circuit(
            chanmgr,
            self.hops(*names),
            timeout=timeout,
            sendme_accept_min_version=self.netdir.param("sendme_accept_min_version", 0, 0, 255),
            circwindow=self.netdir.param("circwindow", 1000, 100, 1000),
            congestion_control=params,
        )


async def wait_for_exits(
    chanmgr: ChannelManager, relays: RelayNet, timeout: float = 45.0
) -> dict[str, float]:
    """Wait until every exit opens a stream to target.test:80 (by name).  Right after the
    network reports ready, an exit has been seen answering END MISC to every hostname stream
    for ~15 s (under heavy machine load); the tests here are about the client, not that."""
    waited: dict[str, float] = {}
    t0 = time.monotonic()
    for name in ("exit1", "exit2"):
        while True:
            try:
                handle = await relays.build(chanmgr, "guard1", "middle1", name, timeout=15)
                try:
                    _, writer, _ = await open_tcp(handle, "target.test", 80, timeout=15)
                    writer.close()
                finally:
                    handle.close()
                break
            except (StreamRefused, TimeoutError, CircuitError):
                if time.monotonic() - t0 > timeout:
                    raise
                await asyncio.sleep(1.0)
        waited[name] = time.monotonic() - t0
    return waited


def relay_net(testnet: TestNetwork) -> RelayNet:
    """The network's relays (congestion control on), once both exits carry streams."""
    n = RelayNet(fetch_netdir(testnet.info))
    run(lambda cm: wait_for_exits(cm, n))
    return n


# --------------------------------------------------------------------------- streams


async def open_tcp(
    handle: TunnelHandle, host: str, port: int, timeout: float = 30, limit: int = 1 << 16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, TorStreamTransport]:
    """A stream on ``handle`` as asyncio reader/writer (what TorClient does, minus retries)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport = TorStreamTransport(loop, f"{host}:{port}", handle.reactor)
    transport.stream = handle.tunnel.open_stream(transport, host, port)
    # Attach before CONNECTED so that no DATA can arrive without a protocol.
    transport.attach(protocol)
    await asyncio.wait_for(asyncio.shield(transport.connected), timeout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer, transport


async def read_http_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def http_get_sha256(
    handle: TunnelHandle, host: str, path: str, port: int = 80
) -> tuple[int, str, int]:
    """(status, sha256 hex of the body, body length), hashing as the body streams in."""
    reader, writer, _ = await open_tcp(handle, host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        status, _headers = await read_http_head(reader)
        digest = hashlib.sha256()
        size = 0
        while chunk := await reader.read(1 << 18):
            digest.update(chunk)
            size += len(chunk)
        return status, digest.hexdigest(), size
    finally:
        writer.close()
