"""Acceptance: conflux (prop 329) with the private network's C tor 0.4.9 exits.

Two congestion-controlled circuits through different guards and middles to the same
exit are linked with `link_conflux`; the exit then spreads what it sends over both
(its LowRTT scheduler, since we ask for HIGH_THROUGHPUT, as C tor clients do), with
SWITCH cells, and reorders what we send.  Any sequencing mistake on our side shows as
a wrong SHA-256 or as the exit closing the circuits.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from engine_helpers import RelayNet, http_get_sha256, open_tcp, read_http_head, relay_net, run

from puretor import TorClient
from puretor.aio.channel import ChannelManager
from puretor.aio.circmgr import conflux_prebuilt_sets
from puretor.aio.circuit import TunnelHandle, link_conflux
from puretor.path.select import supports_conflux
from puretor.proto.circuit import CircuitState
from puretor.proto.conflux import DesiredUx, LegState
from puretor.testnet import TestNetwork

pytestmark = pytest.mark.testnet

LEGS = (("guard1", "middle1", "exit1"), ("guard2", "guard3", "exit1"))


@pytest.fixture(scope="module")
def net(testnet: TestNetwork) -> RelayNet:
    return relay_net(testnet)


async def linked_set(chanmgr: ChannelManager, net: RelayNet, legs: Any = LEGS) -> TunnelHandle:
    handles = [await net.build(chanmgr, *names) for names in legs]
    return await link_conflux(handles, timeout=30, desired_ux=DesiredUx.HIGH_THROUGHPUT)


async def get_file(handle: TunnelHandle, path: str) -> tuple[int, str, int]:
    return await http_get_sha256(handle, "target.test", path)


def test_exits_support_conflux(net: RelayNet) -> None:
    for name in ("exit1", "exit2"):
        assert supports_conflux(net.by_name[name]), name
    assert conflux_prebuilt_sets(net.netdir) == net.netdir.param("cfx_max_prebuilt_set", 3)


def test_two_legs_link_with_a_real_exit(net: RelayNet) -> None:
    async def go(chanmgr: ChannelManager) -> dict[str, Any]:
        handle = await linked_set(chanmgr, net)
        cfx = handle.conflux
        assert cfx is not None
        out = {
            "legs": [leg.state for leg in cfx.legs],
            "rtts": [leg.link_rtt_usec for leg in cfx.legs],
            "owner_is_leg": handle.tunnel.circuit in [leg.circuit for leg in cfx.legs],
            "send_ux": cfx.send_ux,
            "handles": len(handle.conflux_legs),
        }
        # A stream works, and the set is still whole afterwards.
        status, _, size = await get_file(handle, "/ip")
        out["status"], out["open"] = status, [leg.circuit.is_usable for leg in cfx.legs]
        handle.close()
        await asyncio.sleep(0)
        out["closed"] = [leg.circuit.state for leg in cfx.legs]
        return out

    r = run(go)
    assert r["legs"] == [LegState.LINKED, LegState.LINKED]
    assert all(rtt > 0 for rtt in r["rtts"]) and r["owner_is_leg"] and r["handles"] == 2
    # C tor exits ask their clients for MIN_LATENCY (DEFAULT_EXIT_UX).
    assert r["send_ux"] == DesiredUx.MIN_LATENCY
    assert r["status"] == 200 and r["open"] == [True, True]
    # Closing the set's handle closes every leg.
    assert r["closed"] == [CircuitState.CLOSED, CircuitState.CLOSED]


def test_download_100mib_over_two_legs(testnet: TestNetwork, net: RelayNet) -> None:
    f = testnet.info["targets"]["files"]["100MiB"]

    async def go(chanmgr: ChannelManager) -> dict[str, Any]:
        handle = await linked_set(chanmgr, net)
        cfx = handle.conflux
        assert cfx is not None
        t0 = time.monotonic()
        status, sha, size = await get_file(handle, f["path"])
        elapsed = time.monotonic() - t0
        out = {
            "status": status,
            "sha256": sha,
            "size": size,
            "elapsed": elapsed,
            "stats": cfx.stats(),
            "open": [leg.circuit.is_usable for leg in cfx.legs],
            "closed": [leg.circuit.state.value for leg in cfx.legs],
        }
        # Still usable: a second stream on the same set.
        status2, _, _ = await get_file(handle, "/ip")
        out["status2"] = status2
        handle.close()
        return out

    r = run(go, timeout=300)
    assert r["status"] == 200 and r["status2"] == 200
    assert r["size"] == f["size"] and r["sha256"] == f["sha256"]
    assert r["open"] == [True, True], r["closed"]
    stats = r["stats"]
    # The exit used both legs and told us with SWITCH cells where each one's count jumps.
    cells = stats["cells_received"]
    assert min(cells) > sum(cells) // 50, stats
    assert stats["switches_received"] > 0, stats
    print(
        f"conflux: 100 MiB in {r['elapsed']:.1f}s ({f['size'] / r['elapsed'] / 1e6:.1f} MB/s), "
        f"cells per leg {cells}, SWITCH {stats['switches_received']}, "
        f"most held out of order {stats['max_queued_cells']} cells"
    )


def test_upload_10mib_over_conflux_echoes_hash(net: RelayNet) -> None:
    body = hashlib.shake_256(b"puretor conflux upload").digest(10 << 20)

    async def go(chanmgr: ChannelManager) -> dict[str, Any]:
        handle = await linked_set(
            chanmgr, net, (("guard3", "middle1", "exit2"), LEGS[0][:2] + ("exit2",))
        )
        cfx = handle.conflux
        assert cfx is not None
        reader, writer, _ = await open_tcp(handle, "target.test", 80)
        writer.write(
            b"POST /upload HTTP/1.0\r\nHost: target.test\r\n"
            + f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        )
        view = memoryview(body)
        for i in range(0, len(body), 1 << 16):
            writer.write(view[i : i + (1 << 16)])
            await writer.drain()
        status, _ = await read_http_head(reader)
        answer = (await reader.read()).decode().strip()
        writer.close()
        out = {
            "status": status,
            "answer": answer,
            "stats": cfx.stats(),
            "open": [leg.circuit.is_usable for leg in cfx.legs],
        }
        handle.close()
        return out

    r = run(go, timeout=180)
    assert r["status"] == 200
    assert r["answer"] == hashlib.sha256(body).hexdigest()
    assert r["open"] == [True, True]
    assert sum(r["stats"]["cells_sent"]) >= (10 << 20) // 498


def test_concurrent_streams_on_one_set(testnet: TestNetwork, net: RelayNet) -> None:
    f = testnet.info["targets"]["files"]["1MiB"]

    async def go(chanmgr: ChannelManager) -> list[tuple[int, str, int]]:
        handle = await linked_set(chanmgr, net)
        try:
            return await asyncio.gather(*(get_file(handle, f["path"]) for _ in range(20)))
        finally:
            handle.close()

    for status, sha, size in run(go, timeout=180):
        assert (status, sha, size) == (200, f["sha256"], f["size"])


def test_losing_a_leg_ends_the_streams_cleanly(testnet: TestNetwork, net: RelayNet) -> None:
    f = testnet.info["targets"]["files"]["100MiB"]

    async def go(chanmgr: ChannelManager) -> dict[str, Any]:
        handle = await linked_set(chanmgr, net)
        cfx = handle.conflux
        assert cfx is not None
        reader, writer, _ = await open_tcp(handle, "target.test", 80)
        writer.write(f"GET {f['path']} HTTP/1.0\r\nHost: target.test\r\n\r\n".encode())
        await read_http_head(reader)
        got = 0
        while got < 5 << 20:
            got += len(await reader.read(1 << 18))
        other = next(leg.circuit for leg in cfx.legs if leg.circuit is not handle.tunnel.circuit)
        other.destroy(0, "test: leg lost")
        error: BaseException | None = None
        try:
            while await asyncio.wait_for(reader.read(1 << 18), 10):
                pass
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            error = exc
        out: dict[str, Any] = {
            "error": error,
            "closed": handle.closed.is_set(),
            "states": [leg.circuit.state for leg in cfx.legs],
        }
        # A new set to the same exit works at once.
        again = await linked_set(chanmgr, net)
        out["again"] = (await get_file(again, "/ip"))[0]
        again.close()
        return out

    r = run(go, timeout=120)
    assert isinstance(r["error"], ConnectionError), r
    assert r["closed"] and r["states"] == [CircuitState.CLOSED, CircuitState.CLOSED]
    assert r["again"] == 200


@pytest.mark.options("ConfluxEnabled")
def test_tor_client_carries_new_streams_on_prebuilt_sets(
    testnet: TestNetwork, tmp_path: Any
) -> None:
    """The library (and so the daemon) keeps linked sets ready and puts new isolation
    keys on them first, as C tor does."""
    from onion_helpers import make_config

    f = testnet.info["targets"]["files"]["10MiB"]

    async def go() -> dict[str, Any]:
        async with TorClient(make_config(testnet.info, tmp_path)) as tor:
            await tor.bootstrap()
            circmgr = tor._circmgr
            assert circmgr is not None
            deadline = time.monotonic() + 30
            while circmgr.conflux_sets_linked < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            reader, writer = await tor.open_connection("target.test", 80, isolation="cfx")
            handle = writer.get_extra_info("circuit")
            writer.write(f"GET {f['path']} HTTP/1.0\r\nHost: target.test\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
            body = data.split(b"\r\n\r\n", 1)[1]
            return {
                "linked": circmgr.conflux_sets_linked,
                "failures": circmgr.conflux_failures,
                "conflux": handle.conflux is not None,
                "legs": len(handle.conflux_legs),
                "sha256": hashlib.sha256(body).hexdigest(),
            }

    r = asyncio.run(go())
    assert r["linked"] >= 2 and r["failures"] == 0, r
    assert r["conflux"] and r["legs"] == 2, r
    assert r["sha256"] == f["sha256"]


def test_tor_client_falls_back_when_sets_cannot_link(
    testnet: TestNetwork, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exit that never answers LINK (here: linking made to time out) costs nothing
    but the attempt: the slot gets an ordinary circuit and streams go through."""
    from onion_helpers import make_config

    from puretor.aio import circmgr as circmgr_module
    from puretor.errors import CircuitBuildTimeout

    async def never_links(legs: Any, **_: Any) -> TunnelHandle:
        for leg in legs:
            leg.close()
        raise CircuitBuildTimeout("test: conflux legs did not link")

    monkeypatch.setattr(circmgr_module, "link_conflux", never_links)

    async def go() -> dict[str, Any]:
        async with TorClient(make_config(testnet.info, tmp_path)) as tor:
            await tor.bootstrap()
            circmgr = tor._circmgr
            assert circmgr is not None
            deadline = time.monotonic() + 30
            while circmgr.conflux_failures < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            reader, writer = await tor.open_connection("target.test", 80, isolation="plain")
            writer.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
            status = (await reader.read()).split(b" ", 2)[1]
            handle = writer.get_extra_info("circuit")
            writer.close()
            return {
                "failures": circmgr.conflux_failures,
                "linked": circmgr.conflux_sets_linked,
                "status": status,
                "conflux": handle.conflux is not None,
            }

    r = asyncio.run(go())
    # The three prebuilt sets failed at once; then a pause before the next attempt.
    assert r["failures"] == 3 and r["linked"] == 0, r
    assert r["status"] == b"200" and not r["conflux"]


@pytest.mark.options("ConfluxEnabled")
def test_conflux_enabled_0_builds_no_sets(testnet: TestNetwork, tmp_path: Any) -> None:
    from onion_helpers import make_config

    async def go() -> dict[str, Any]:
        config = make_config(testnet.info, tmp_path, "--ConfluxEnabled", "0")
        async with TorClient(config) as tor:
            await tor.bootstrap()
            reader, writer = await tor.open_connection("target.test", 80, isolation="x")
            writer.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
            await reader.read()
            handle = writer.get_extra_info("circuit")
            writer.close()
            await asyncio.sleep(1.0)  # time for preemptive circuits
            circmgr = tor._circmgr
            assert circmgr is not None
            return {
                "linked": circmgr.conflux_sets_linked,
                "conflux": handle.conflux is not None,
                "slots": [s.conflux for s in circmgr.pool.slots],
            }

    r = asyncio.run(go())
    assert r["linked"] == 0 and not r["conflux"] and not any(r["slots"]), r
