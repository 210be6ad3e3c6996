"""Acceptance: congestion control (prop 324) with the private network's C tor 0.4.9 exits.

Circuits are built through chosen relays with the asyncio layer (`build_circuit`), asking
the exit for congestion control exactly when `CircuitManager` would (ntor v3 to an exit
with FlowCtrl=2 and Relay=4 while the consensus cc_alg is not 0).  The exit then runs
Vegas and flow control against us: circuit SENDMEs every sendme_inc cells, no stream
SENDMEs, XON/XOFF.  A protocol mistake on our side makes the exit close the circuit.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from engine_helpers import RelayNet, open_tcp, read_http_head, relay_net, run

from puretor.aio.channel import ChannelManager
from puretor.aio.circmgr import congestion_control_for
from puretor.proto.congestion import UNLIMITED_WINDOW
from puretor.testnet import TestNetwork

pytestmark = pytest.mark.testnet


@pytest.fixture(scope="module")
def net(testnet: TestNetwork) -> RelayNet:
    return relay_net(testnet)


def test_exits_offer_congestion_control(net: RelayNet) -> None:
    nd = net.netdir
    assert nd.param("cc_alg", 2) == 2
    for name in ("exit1", "exit2"):
        exit_relay = net.by_name[name]
        assert exit_relay.supports("FlowCtrl", 2) and exit_relay.supports("Relay", 4), name
        assert congestion_control_for(nd, exit_relay, internal=False) is not None
    # Middles are never asked: only the last hop of an exit circuit.
    assert congestion_control_for(nd, net.by_name["middle1"], internal=True) is None


def test_cc_negotiated_with_exit(net: RelayNet) -> None:
    async def go(chanmgr: ChannelManager) -> tuple[bool, int, bool, int]:
        handle = await net.build(chanmgr, "guard1", "middle1", "exit1")
        cc = handle.tunnel.cc
        plain = await net.build(chanmgr, "guard2", "middle1", "exit2", cc=False)
        result = (
            handle.congestion_controlled,
            cc.sendme_inc if cc else 0,
            plain.congestion_controlled,
            handle.tunnel.hop_count,
        )
        handle.close()
        plain.close()
        return result

    negotiated, inc, plain_cc, hops = run(go)
    assert negotiated and not plain_cc and hops == 3
    # C tor only accepts ±1 around the consensus cc_sendme_inc (31 by default).
    assert abs(inc - net.netdir.param("cc_sendme_inc", 31, 1, 254)) <= 1


def test_download_100mib_on_cc_circuit(testnet: TestNetwork, net: RelayNet) -> None:
    f = testnet.info["targets"]["files"]["100MiB"]

    async def go(chanmgr: ChannelManager) -> dict[str, Any]:
        handle = await net.build(chanmgr, "guard1", "middle1", "exit1")
        assert handle.congestion_controlled
        circ = handle.tunnel
        sent0 = circ.cells_sent
        t0 = time.monotonic()
        reader, writer, transport = await open_tcp(handle, "target.test", 80)
        writer.write(f"GET {f['path']} HTTP/1.0\r\nHost: target.test\r\n\r\n".encode())
        status, _ = await read_http_head(reader)
        digest = hashlib.sha256()
        size = 0
        while chunk := await reader.read(1 << 18):
            digest.update(chunk)
            size += len(chunk)
        elapsed = time.monotonic() - t0
        stream = transport.stream
        assert stream is not None and stream.flow is not None
        out = {
            "status": status,
            "sha256": digest.hexdigest(),
            "size": size,
            "elapsed": elapsed,
            "open": handle.is_open,
            "closed": circ.closed_reason,
            "cells_received": circ.cells_received,
            "cells_sent": circ.cells_sent - sent0,
            "stream_cells": UNLIMITED_WINDOW - stream.deliver_window,
            "xoffs": stream.flow.xoffs_sent,
            "xons": stream.flow.xons_sent,
        }
        # The circuit is still usable afterwards: the exit did not close it.
        _, w2, _ = await open_tcp(handle, "target.test", 80)
        w2.close()
        out["open_after"] = handle.is_open
        writer.close()
        handle.close()
        return out

    r = run(go, timeout=300)
    assert r["status"] == 200
    assert r["size"] == f["size"]
    assert r["sha256"] == f["sha256"]
    assert r["open"] and r["open_after"], r["closed"]
    cells = r["stream_cells"]
    assert cells >= f["size"] // 498
    # No stream SENDMEs: the deliver window only ever went down.  Circuit SENDMEs went
    # every sendme_inc cells (and a few cells for BEGIN/END/XON/XOFF).
    sendmes = r["cells_sent"]
    assert cells // 32 <= sendmes <= cells // 30 + 10 + 2 * r["xoffs"]
    print(
        f"CC: 100 MiB in {r['elapsed']:.1f}s ({f['size'] / r['elapsed'] / 1e6:.1f} MB/s), "
        f"{sendmes} cells sent, XOFF/XON {r['xoffs']}/{r['xons']}"
    )


def test_upload_10mib_on_cc_circuit_echoes_hash(net: RelayNet) -> None:
    body = hashlib.shake_256(b"puretor cc upload").digest(10 << 20)

    async def go(chanmgr: ChannelManager) -> dict[str, Any]:
        handle = await net.build(chanmgr, "guard3", "middle1", "exit2")
        assert handle.congestion_controlled
        cc = handle.tunnel.cc
        assert cc is not None
        reader, writer, _ = await open_tcp(handle, "target.test", 80)
        writer.write(
            b"POST /upload HTTP/1.0\r\nHost: target.test\r\n"
            + f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        )
        view = memoryview(body)
        t0 = time.monotonic()
        for i in range(0, len(body), 1 << 16):
            writer.write(view[i : i + (1 << 16)])
            await writer.drain()
        status, _ = await read_http_head(reader)
        elapsed = time.monotonic() - t0
        answer = (await reader.read()).decode().strip()
        writer.close()
        out = {
            "status": status,
            "answer": answer,
            "open": handle.is_open,
            "closed": handle.tunnel.closed_reason,
            "sendmes": cc.sendmes_received,
            "max_inflight": cc.max_inflight,
            "cwnd": cc.cwnd,
            "rtt_ms": (cc.min_rtt_usec / 1000, cc.ewma_rtt_usec / 1000),
            "elapsed": elapsed,
        }
        handle.close()
        return out

    r = run(go, timeout=180)
    assert r["status"] == 200
    assert r["answer"] == hashlib.sha256(body).hexdigest()
    assert r["open"], r["closed"]
    # The exit acknowledged every sendme_inc cells with an authenticated SENDME (a wrong
    # digest or an unexpected one closes the circuit) and Vegas measured RTTs from them.
    assert r["sendmes"] >= (10 << 20) // 498 // 32
    assert r["rtt_ms"][0] > 0
    print(
        f"CC upload: 10 MiB in {r['elapsed']:.1f}s, cwnd {r['cwnd']}, "
        f"max in flight {r['max_inflight']} cells, RTT min/ewma {r['rtt_ms']} ms"
    )


def test_slow_reader_gets_xoff_and_xon_from_real_exit(testnet: TestNetwork, net: RelayNet) -> None:
    """Stop reading for a while: we hold what arrives, XOFF the exit, which stops; then
    read on: XON, and the file arrives complete."""
    f = testnet.info["targets"]["files"]["10MiB"]

    async def go(chanmgr: ChannelManager) -> dict[str, Any]:
        handle = await net.build(chanmgr, "guard2", "middle1", "exit1")
        circ = handle.tunnel
        assert circ.cc is not None and circ.cc_params is not None
        reader, writer, transport = await open_tcp(handle, "target.test", 80)
        stream = transport.stream
        assert stream is not None and stream.flow is not None
        flow = stream.flow
        writer.write(f"GET {f['path']} HTTP/1.0\r\nHost: target.test\r\n\r\n".encode())
        assert (await read_http_head(reader))[0] == 200
        digest = hashlib.sha256()
        size = 0
        chunk = await reader.read(1 << 16)
        digest.update(chunk)
        size += len(chunk)
        # Stop reading: the StreamReader pauses us at 128 KiB, we hold the rest.
        await asyncio.sleep(3.0)
        held_paused = flow.held_bytes
        xoffs_paused = flow.xoffs_sent
        cells_paused = circ.cells_received
        await asyncio.sleep(1.0)
        cells_quiet = circ.cells_received - cells_paused  # the exit stopped
        while chunk := await reader.read(1 << 18):
            digest.update(chunk)
            size += len(chunk)
        out = {
            "sha256": digest.hexdigest(),
            "size": size,
            "held_paused": held_paused,
            "xoffs_paused": xoffs_paused,
            "cells_quiet": cells_quiet,
            "xoffs": flow.xoffs_sent,
            "xons": flow.xons_sent,
            "open": handle.is_open,
            "closed": circ.closed_reason,
            "limit": circ.cc_params.xoff_client,
            "max_held": circ.cc_params.max_held_bytes,
        }
        writer.close()
        handle.close()
        return out

    r = run(go, timeout=180)
    assert r["size"] == f["size"] and r["sha256"] == f["sha256"]
    assert r["open"], r["closed"]
    assert r["xoffs_paused"] == 1, r
    assert r["limit"] < r["held_paused"] < r["max_held"], r
    assert r["cells_quiet"] <= 5, r  # only SENDME-less stragglers after the XOFF took effect
    assert r["xons"] >= 1 and r["xoffs"] == r["xons"], r
    print(
        f"slow reader: held {r['held_paused']} bytes while paused, XOFF/XON {r['xoffs']}/{r['xons']}"
    )
