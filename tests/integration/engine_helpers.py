"""Helpers for the engine tests that drive circuits through chosen relays directly.

`run` gives a coroutine a fresh `ChannelManager`; `RelayNet` (the ``net`` fixture of
those modules) fetches and verifies the network's directory once, then builds circuits
through relays named like ``"guard1", "middle1", "exit1"`` - asking the exit for
congestion control exactly when `CircuitManager` would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circmgr import congestion_control_for
from puretor.aio.circuit import CircuitHandle, HopSpec, build_circuit
from puretor.aio.dirclient import fetch_raw
from puretor.aio.stream import TorStreamTransport
from puretor.dir.authorities import parse_dir_authority_line
from puretor.dir.http import HttpResponseParser, build_request
from puretor.dir.netdir import NetDir, Relay
from puretor.dir.state import DirState
from puretor.errors import CircuitError, StreamRefused
from puretor.testnet import TestNetwork

T = TypeVar("T")


def run(coro_fn: Callable[[ChannelManager], Awaitable[T]], timeout: float = 120.0) -> T:
    async def main() -> T:
        chanmgr = ChannelManager()
        try:
            return await asyncio.wait_for(coro_fn(chanmgr), timeout)
        finally:
            chanmgr.close_all()
            await asyncio.sleep(0)

    return asyncio.run(main())


async def _fetch_netdir(chanmgr: ChannelManager, testnet: TestNetwork) -> NetDir:
    auths = [
        parse_dir_authority_line(line.split(None, 1)[1])
        for line in testnet.info["dir_authority_lines"]
    ]
    state = DirState(auths)
    a = auths[0]
    first = HopSpec(ChannelTarget(a.address, a.or_port, a.rsa_id, None, a.nickname), None)
    handle = await build_circuit(chanmgr, [first], timeout=30)
    deadline = time.monotonic() + 60
    while not state.have_enough_dir_info(time.time()):
        assert time.monotonic() < deadline, f"directory incomplete: {state.last_error}"
        reqs = state.next_requests(time.time())
        if not reqs:
            await asyncio.sleep(0.2)
            continue
        for req in reqs:
            raw = await fetch_raw(handle, build_request(req.path), timeout=60, max_size=64 << 20)
            parser = HttpResponseParser()
            parser.feed(raw)
            body = parser.finish().body
            if req.kind == "consensus":
                state.add_consensus(body, time.time())
            elif req.kind == "certs":
                state.add_certs(body, time.time(), req.digests)
            else:
                state.add_microdescs(body, req.digests, time.time())
    handle.close()
    nd = state.netdir(time.time())
    assert nd is not None
    return nd


class RelayNet:
    def __init__(self, netdir: NetDir) -> None:
        self.netdir = netdir
        self.by_name = {r.nickname: r for r in netdir.relays}

    def hop(self, relay: Relay) -> HopSpec:
        return HopSpec.for_relay(
            relay.address, relay.or_port, relay.rsa_id, relay.ed_id, relay.ntor_key, relay.nickname
        )

    async def build(
        self, chanmgr: ChannelManager, *names: str, cc: bool = True, timeout: float = 30
    ) -> CircuitHandle:
        relays = [self.by_name[n] for n in names]
        params = congestion_control_for(self.netdir, relays[-1], internal=False) if cc else None
        return await build_circuit(
            chanmgr,
            [self.hop(r) for r in relays],
            timeout=timeout,
            sendme_accept_min_version=self.netdir.param("sendme_accept_min_version", 0, 0, 255),
            circwindow=self.netdir.param("circwindow", 1000, 100, 1000),
            congestion_control=params,
        )


def relay_net(testnet: TestNetwork) -> RelayNet:
    """The network's relays, once both exits carry streams (the ``net`` fixtures)."""
    n = RelayNet(run(lambda cm: _fetch_netdir(cm, testnet)))

    async def wait_for_exits(chanmgr: ChannelManager) -> None:
        # Right after start-up an exit may answer END MISC for a while (see
        # test_engine_protocol.wait_for_exits): wait until both open a stream.
        t0 = time.monotonic()
        for name in ("exit1", "exit2"):
            while True:
                try:
                    handle = await n.build(chanmgr, "guard1", "middle1", name, timeout=15)
                    try:
                        _, writer, _ = await open_tcp(handle, "target.test", 80, timeout=15)
                        writer.close()
                    finally:
                        handle.close()
                    break
                except (StreamRefused, TimeoutError, CircuitError):
                    if time.monotonic() - t0 > 45:
                        raise
                    await asyncio.sleep(1.0)

    run(wait_for_exits)
    return n


async def open_tcp(
    handle: CircuitHandle, host: str, port: int, timeout: float = 30, limit: int = 1 << 16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, TorStreamTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport = TorStreamTransport(loop, f"{host}:{port}")
    transport.stream = handle.circuit.open_stream(transport, host, port)
    transport.attach(protocol)
    await asyncio.wait_for(asyncio.shield(transport.connected), timeout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer, transport


async def read_http_head(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1])
