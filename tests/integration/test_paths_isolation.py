"""Acceptance: path selection, stream isolation and guard persistence against the private network.

Drives an in-process `TorClient` (configured through the torrc parser, as ``tor-client`` is).
Destructive guard/relay fault tests live in ``test_paths_zz_faults.py`` so that they run last.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from puretor.aio.circuit import HopSpec, TunnelHandle, build_circuit
from puretor.aio.stream import TorStreamTransport
from puretor.client import IsolationToken, TorClient
from puretor.config import TorConfig, load_config
from puretor.dir.netdir import NetDir, Relay
from puretor.errors import CircuitError, StreamRefused
from puretor.testnet import NetworkInfo, TestNetwork

pytestmark = pytest.mark.testnet

T = TypeVar("T")


def client_config(info: NetworkInfo, workdir: Path) -> TorConfig:
    workdir.mkdir(parents=True, exist_ok=True)
    torrc = workdir / "torrc"
    torrc.write_text(
        "\n".join(
            [
                "TestingTorNetwork 1",
                f"DataDirectory {workdir / 'data'}",
                "UseDefaultFallbackDirs 0",
                "SocksPort 0",
                *info["dir_authority_lines"],
            ]
        )
        + "\n"
    )
    return load_config(["-f", str(torrc)])


def with_client(
    config: TorConfig,
    fn: Callable[[TorClient], Awaitable[T]],
    timeout: float = 180,
    *,
    probe_exits: bool = True,
) -> T:
    """Bootstrap a TorClient, run ``fn(tor)``, always close the client."""

    async def main() -> T:
        tor = TorClient(config)
        try:
            await asyncio.wait_for(tor.bootstrap(), 60)
            if probe_exits:
                await wait_for_exits(tor)
            return await asyncio.wait_for(fn(tor), timeout)
        finally:
            await tor.aclose()

    return asyncio.run(main())


async def wait_for_exits(tor: TorClient, timeout: float = 45.0) -> None:
    """Wait until every exit opens a stream to target.test:80 (by name): right after the
    network reports ready, an exit has been seen answering END MISC to hostname streams for
    ~15 s under heavy machine load.  These tests are about the client, not about that."""
    netdir = tor._dirmgr.require_netdir()
    r = {x.nickname: x for x in netdir.relays}
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    for name in ("exit1", "exit2"):
        while True:
            try:
                handle = await build_circuit(
                    tor._chanmgr, [_hop(r["guard1"]), _hop(r["middle1"]), _hop(r[name])], timeout=15
                )
                try:
                    transport = TorStreamTransport(loop, "target.test:80", handle.reactor)
                    transport.stream = handle.tunnel.open_stream(transport, "target.test", 80)
                    await asyncio.wait_for(asyncio.shield(transport.connected), 15)
                    transport.close()
                finally:
                    handle.close()
                break
            except (StreamRefused, TimeoutError, CircuitError):
                if time.monotonic() - t0 > timeout:
                    raise
                await asyncio.sleep(1.0)


def _hop(relay: Relay) -> HopSpec:
    return HopSpec.for_relay(
        relay.address, relay.or_port, relay.rsa_id, relay.ed_id, relay.ntor_key, relay.nickname
    )


async def get_ip(
    tor: TorClient, port: int, isolation: Any, host: str = "target.test"
) -> tuple[str, TunnelHandle]:
    """GET /ip through Tor: (the source address the target saw, the circuit used)."""
    reader, writer = await tor.open_connection(host, port, isolation=isolation)
    try:
        circuit = writer.get_extra_info("circuit")
        writer.write(f"GET /ip HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body.decode().strip(), circuit


def exit_weights(netdir: NetDir, port: int) -> dict[str, float]:
    """Expected exit choice probabilities (path-spec §2.2): Bandwidth × W{e}{role} × W{role}b."""
    weights: dict[str, float] = {}
    for relay in netdir.usable_relays():
        if not relay.policy.allows(port) or "BadExit" in relay.flags:
            continue
        guard = "Guard" in relay.flags
        exit_ = "Exit" in relay.flags
        role_w = ("Wed" if exit_ else "Weg") if guard else ("Wee" if exit_ else "Wem")
        dir_w = ("Wdb" if exit_ else "Wgb") if guard else ("Web" if exit_ else "Wmb")
        factor = netdir.weight(dir_w) if "V2Dir" in relay.flags else 10000
        weights[relay.nickname] = relay.bandwidth * netdir.weight(role_w) * factor
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


# --------------------------------------------------------------------------- isolation and weights


def test_200_isolated_streams_never_share_circuits_and_follow_exit_weights(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    info = testnet.info
    exit_by_addr = {e["address"]: e["nickname"] for e in info["exits"]}
    n = 200

    async def go(tor: TorClient) -> tuple[list[tuple[str, str, TunnelHandle]], NetDir, Any]:
        netdir = tor._dirmgr.require_netdir()
        tokens = [IsolationToken(f"key{i}") for i in range(n)]
        sem = asyncio.Semaphore(25)

        async def one(i: int) -> tuple[str, str, TunnelHandle]:
            async with sem:
                seen, circ = await get_ip(tor, 80, tokens[i])
                return f"key{i}", seen, circ

        results = await asyncio.gather(*(one(i) for i in range(n)))
        # Same key again: the circuit of its first stream takes it (sanity of the key check).
        again, circ_again = await get_ip(tor, 80, tokens[0])
        assert tor._circmgr is not None
        slot_keys = {
            id(s.circuit): s.isolation for s in tor._circmgr.pool.slots if s.circuit is not None
        }
        return list(results), netdir, (again, circ_again, slot_keys)

    t0 = time.monotonic()
    results, netdir, (again, circ_again, slot_keys) = with_client(
        client_config(info, tmp_path), go, 300
    )
    elapsed = time.monotonic() - t0

    keys_by_circuit: dict[int, set[str]] = {}
    for key, _, circ in results:
        keys_by_circuit.setdefault(id(circ), set()).add(key)
    shared = {c: ks for c, ks in keys_by_circuit.items() if len(ks) > 1}
    assert not shared, f"circuits carrying streams of several keys: {list(shared.values())[:5]}"
    assert len(keys_by_circuit) == n
    for key, seen, circ in results:
        assert [h.target.nickname for h in circ.path][-1] == exit_by_addr[seen], key
        # The circuit manager holds the circuit for this key (and only this key).
        assert repr(slot_keys.get(id(circ))) == f"IsolationToken('{key}')", key
    assert circ_again is results[0][2] and again == results[0][1]

    counts = Counter(exit_by_addr[seen] for _, seen, _ in results)
    expected = exit_weights(netdir, 80)
    assert set(expected) == {"exit1", "exit2"}
    p = expected["exit1"]
    k = counts["exit1"]
    sd = math.sqrt(n * p * (1 - p))
    # Loose: 5 standard deviations (a false alarm about once in 1.7 million runs).
    assert abs(k - n * p) <= 5 * sd, (
        f"exit1 carried {k}/{n} streams, expected {n * p:.1f} ± {sd:.1f} "
        f"(p={p:.3f} from the consensus weights; counts {dict(counts)})"
    )
    print(
        f"200 isolated streams in {elapsed:.1f}s; exits {dict(counts)}, expected p(exit1)={p:.3f}"
    )


def test_port_only_exit1_allows_always_uses_exit1(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    only = info["targets"]["exit1_only"]
    port = only["ports"][0]

    async def go(tor: TorClient) -> tuple[list[tuple[str, TunnelHandle]], NetDir]:
        netdir = tor._dirmgr.require_netdir()
        results = await asyncio.gather(
            *(get_ip(tor, port, IsolationToken(f"x{i}")) for i in range(30))
        )
        return list(results), netdir

    results, netdir = with_client(client_config(info, tmp_path), go)
    assert set(exit_weights(netdir, port)) == {only["exit"]}
    for seen, circ in results:
        assert seen == only["exit_address"]
        assert circ.path[-1].target.nickname == only["exit"]


# --------------------------------------------------------------------------- guard persistence


def _state(data_dir: Path) -> list[dict[str, Any]]:
    return json.loads((data_dir / "state.json").read_text())["guards"]


def test_guard_survives_a_restart(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    config = client_config(info, tmp_path)
    data_dir = tmp_path / "data"

    async def first(tor: TorClient) -> tuple[str, list[str]]:
        _, circ = await get_ip(tor, 80, IsolationToken("first"))
        assert tor._guards is not None
        primary = [
            tor._guards.netdir.by_rsa_id(r).nickname
            for r in tor._guards.primary_guards(time.time())
        ]  # type: ignore[union-attr]
        return circ.path[0].target.nickname, primary

    first_guard, primary_before = with_client(config, first)
    guards_before = _state(data_dir)
    confirmed_before = {g["nickname"]: g["confirmed_idx"] for g in guards_before}
    assert confirmed_before[first_guard] is not None, guards_before  # used => confirmed
    n_use = 2  # consensus guard-n-primary-guards-to-use
    assert info["consensus_params"]["guard-n-primary-guards-to-use"] == n_use
    assert first_guard in primary_before[:n_use]

    async def second(tor: TorClient) -> tuple[list[str], list[str], int]:
        hops = []
        for i in range(8):
            _, circ = await get_ip(tor, 80, IsolationToken(f"after-restart-{i}"))
            hops.append(circ.path[0].target.nickname)
        assert tor._guards is not None
        primary = [
            tor._guards.netdir.by_rsa_id(r).nickname
            for r in tor._guards.primary_guards(time.time())
        ]  # type: ignore[union-attr]
        return hops, primary, tor._dirmgr.requests_made

    hops, primary_after, _ = with_client(config, second)
    guards_after = _state(data_dir)
    # Same sample, same order; the first guard is still confirmed (at the same index).
    assert [g["rsa_id"] for g in guards_after[: len(guards_before)]] == [
        g["rsa_id"] for g in guards_before
    ]
    confirmed_after = {g["nickname"]: g["confirmed_idx"] for g in guards_after}
    assert confirmed_after[first_guard] == confirmed_before[first_guard]
    assert primary_after[:n_use] == primary_before[:n_use]
    assert first_guard in primary_after[:n_use]
    # Every first hop after the restart is one of the primary guards in use before it.
    assert set(hops) <= set(primary_before[:n_use]), (hops, primary_before)
