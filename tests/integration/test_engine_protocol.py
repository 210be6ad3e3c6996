"""Acceptance: the protocol engine against the private network's real C tor relays.

Everything here drives the asyncio layer directly (`ChannelManager`, `build_circuit`,
`TorStreamTransport`, `fetch_raw`) through paths the test chooses, with the relays' keys taken
from a directory the test fetches itself over BEGIN_DIR on a CREATE_FAST circuit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from typing import Any

import pytest
from engine_helpers import (
    RelayNet,
    authorities,
    dir_get,
    fast_hop,
    fetch_netdir,
    http_get_sha256,
    open_tcp,
    read_http_head,
    run,
    wait_for_exits,
)

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circuit import build_circuit
from puretor.aio.stream import TorStreamTransport
from puretor.dir.consensus import parse_consensus
from puretor.dir.netdir import NetDir
from puretor.dir.state import DirState
from puretor.dir.verify import verify_consensus
from puretor.errors import ChannelError, StreamRefused
from puretor.proto.channel import ChannelState
from puretor.proto.circuit import CircuitState
from puretor.proto.relaymsg import EndReason
from puretor.testnet import NetworkInfo, TestNetwork

pytestmark = pytest.mark.testnet

# --------------------------------------------------------------------------- helpers


def ed_id(b64: str | None) -> bytes | None:
    if not b64:
        return None
    return base64.b64decode(b64 + "=" * (-len(b64) % 4))


@pytest.fixture(scope="module")
def netdir(testnet: TestNetwork) -> NetDir:
    return fetch_netdir(testnet.info)


@pytest.fixture(scope="module")
def relays(netdir: NetDir) -> RelayNet:
    net = RelayNet(netdir, cc=False)
    waited = run(lambda cm: wait_for_exits(cm, net))
    if max(waited.values()) > 2.0:
        print(f"NOTE: exits became usable only after {waited}")
    return net


# --------------------------------------------------------------------------- channels


def test_verified_channel_to_every_relay(testnet: TestNetwork) -> None:
    info = testnet.info
    nodes = info["relays"]
    assert {n["role"] for n in nodes} >= {"authority", "guard", "middle", "exit"}

    async def go(chanmgr: ChannelManager) -> list[Any]:
        targets = [
            ChannelTarget(
                n["address"],
                n["orport"] or 0,
                bytes.fromhex(n["fingerprint"] or ""),
                ed_id(n["ed25519"]),
                n["nickname"],
            )
            for n in nodes
        ]
        return list(await asyncio.gather(*(chanmgr.get_channel(t) for t in targets)))

    channels = run(go)
    assert len(channels) == len(nodes)
    for node, chan in zip(nodes, channels, strict=True):
        assert chan.state in (ChannelState.OPEN, ChannelState.CLOSED)  # closed by run()
        assert chan.link_protocol in (4, 5), node["nickname"]
        assert chan.identity is not None
        assert chan.identity.rsa_id.hex().upper() == node["fingerprint"], node["nickname"]
        assert chan.identity.ed_id == ed_id(node["ed25519"]), node["nickname"]


@pytest.mark.parametrize("wrong", ["rsa", "ed25519"])
def test_channel_with_wrong_identity_is_refused(testnet: TestNetwork, wrong: str) -> None:
    by_name = {n["nickname"]: n for n in testnet.info["relays"]}
    guard1, guard2 = by_name["guard1"], by_name["guard2"]
    rsa = bytes.fromhex(guard1["fingerprint"] or "")
    ed = ed_id(guard1["ed25519"])
    if wrong == "rsa":
        rsa = bytes.fromhex(guard2["fingerprint"] or "")  # another relay's identity
    else:
        ed = ed_id(guard2["ed25519"])
    target = ChannelTarget(guard1["address"], guard1["orport"] or 0, rsa, ed, "guard1")

    async def go(chanmgr: ChannelManager) -> str:
        with pytest.raises(ChannelError) as err:
            await chanmgr.get_channel(target)
        assert chanmgr.connects == 0
        return str(err.value)

    message = run(go)
    assert "guard1" in message and "handshake" in message, message
    if wrong == "rsa":
        assert "RSA" in message or "identity" in message.lower(), message
    else:
        assert "Ed25519" in message and (ed or b"").hex() in message, message


# --------------------------------------------------------------------------- directory over BEGIN_DIR


def test_create_fast_begin_dir_consensus_from_each_authority(testnet: TestNetwork) -> None:
    info = testnet.info
    auths = authorities(info)

    async def go(chanmgr: ChannelManager) -> list[tuple[str, bytes, bytes]]:
        out = []
        for auth in auths:
            handle = await build_circuit(chanmgr, [fast_hop(auth)], timeout=30)
            assert handle.tunnel.hop_count == 1
            state = DirState(auths)
            consensus = await dir_get(handle, state.consensus_path())
            certs = await dir_get(handle, "/tor/keys/all")
            out.append((auth.nickname, consensus, certs))
            handle.close()
        return out

    from puretor.dir.authcert import parse_authcerts

    fingerprints = {n["fingerprint"] for n in info["relays"]}
    for nickname, body, cert_body in run(go):
        consensus = parse_consensus(body)
        certs = parse_authcerts(cert_body)
        status = verify_consensus(consensus, certs, auths, time.time())
        assert len(status.good) == len(auths), (nickname, status)
        listed = {rs.rsa_id.hex().upper() for rs in consensus.routers}
        assert listed == fingerprints, nickname


# --------------------------------------------------------------------------- circuits and streams


def test_three_hop_circuit_through_chosen_relays(testnet: TestNetwork, relays: RelayNet) -> None:
    targets = testnet.info["targets"]

    async def go(chanmgr: ChannelManager) -> list[tuple[list[str], int, str]]:
        results = []
        for names in (("guard1", "middle1", "exit1"), ("guard2", "guard3", "exit2")):
            handle = await relays.build(chanmgr, *names)
            assert handle.is_open and handle.tunnel.hop_count == 3
            assert [h.target.nickname for h in handle.path] == list(names)
            reader, writer, _ = await open_tcp(handle, targets["hostname"], 80)
            writer.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
            status, _ = await read_http_head(reader)
            body = (await reader.read()).decode().strip()
            writer.close()
            handle.close()
            results.append((list(names), status, body))
        return results

    by_name = {n["nickname"]: n for n in testnet.info["relays"]}
    for names, status, seen in run(go):
        assert status == 200
        assert seen == by_name[names[-1]]["address"], (names, seen)


def test_download_100mib_with_authenticated_sendmes(testnet: TestNetwork, relays: RelayNet) -> None:
    f = testnet.info["targets"]["files"]["100MiB"]
    # The relays run with sendme_accept_min_version=1: a v0 (unauthenticated) SENDME from us
    # would make the exit close the circuit long before 100 MiB got through.
    assert relays.netdir.params.get("sendme_accept_min_version") == 1

    async def go(chanmgr: ChannelManager) -> tuple[int, str, int, int, float]:
        handle = await relays.build(chanmgr, "guard1", "middle1", "exit1")
        t0 = time.monotonic()
        status, digest, size = await http_get_sha256(handle, "target.test", f["path"])
        elapsed = time.monotonic() - t0
        cells = handle.tunnel.cells_received
        assert handle.is_open, handle.tunnel.closed_reason
        handle.close()
        return status, digest, size, cells, elapsed

    status, digest, size, cells, elapsed = run(go, timeout=240)
    assert status == 200
    assert size == f["size"]
    assert digest == f["sha256"]
    assert cells >= f["size"] // 498
    print(f"100 MiB in {elapsed:.1f}s ({f['size'] / elapsed / 1e6:.1f} MB/s)")


def test_fifty_concurrent_streams_on_one_circuit(testnet: TestNetwork, relays: RelayNet) -> None:
    files = testnet.info["targets"]["files"]
    # Mostly 1 MiB, some 10 MiB and some small /bytes/ ranges: 50 streams, one circuit.
    plan = []
    for i in range(50):
        if i % 10 == 3:
            plan.append((files["10MiB"]["path"], files["10MiB"]["sha256"], files["10MiB"]["size"]))
        elif i % 10 == 7:
            n = 1000 + 37 * i
            plan.append((f"/bytes/{n}", None, n))
        else:
            plan.append((files["1MiB"]["path"], files["1MiB"]["sha256"], files["1MiB"]["size"]))

    async def go(chanmgr: ChannelManager) -> tuple[list[tuple[int, str, int]], int, bool]:
        handle = await relays.build(chanmgr, "guard2", "middle1", "exit1")
        results = await asyncio.gather(
            *(http_get_sha256(handle, "target.test", path) for path, _, _ in plan)
        )
        still_open = handle.is_open
        leftover = len(handle.tunnel.streams)
        handle.close()
        return list(results), leftover, still_open

    results, leftover, still_open = run(go, timeout=240)
    assert still_open
    assert leftover == 0  # every stream ended and was forgotten
    prefix = hashlib.shake_256(b"puretor-testnet:100MiB").digest(50 * 37 + 1000)
    for (path, sha, size), (status, digest, got) in zip(plan, results, strict=True):
        assert status == 200, path
        assert got == size, path
        want = sha if sha is not None else hashlib.sha256(prefix[:size]).hexdigest()
        assert digest == want, path


def test_upload_10mib_echoes_hash(testnet: TestNetwork, relays: RelayNet) -> None:
    # Uploading needs the exit's SENDMEs; we accept only authenticated (v1) ones whose digest
    # matches the cell they acknowledge (sendme_accept_min_version=1 from the consensus).
    body = hashlib.shake_256(b"puretor engine upload").digest(10 << 20)

    async def go(chanmgr: ChannelManager) -> tuple[int, str]:
        handle = await relays.build(chanmgr, "guard3", "middle1", "exit2")
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
        assert handle.is_open, handle.tunnel.closed_reason
        handle.close()
        return status, answer

    status, answer = run(go, timeout=180)
    assert status == 200
    assert answer == hashlib.sha256(body).hexdigest()


def _policy_ports(info: NetworkInfo) -> tuple[int, int]:
    """A port exit2's policy rejects and exit1 accepts, and the closed port."""
    targets = info["targets"]
    exit2 = next(e for e in info["exits"] if e["nickname"] == "exit2")
    open_ports = {int(p) for p in exit2["open_ports"].split(",")}
    rejected = next(p for p in targets["exit1_only"]["ports"] if p not in open_ports)
    assert targets["closed_port"] in open_ports  # both exits accept it; nothing listens
    return rejected, targets["closed_port"]


@pytest.mark.parametrize("exit_name", ["exit1", "exit2"])
def test_closed_port_gives_connectrefused_and_circuit_survives(
    testnet: TestNetwork, relays: RelayNet, exit_name: str
) -> None:
    _, closed = _policy_ports(testnet.info)
    f = testnet.info["targets"]["files"]["1MiB"]

    async def go(chanmgr: ChannelManager) -> tuple[StreamRefused, tuple[int, str, int]]:
        handle = await relays.build(chanmgr, "guard1", "middle1", exit_name)
        with pytest.raises(StreamRefused) as err:
            await open_tcp(handle, testnet.info["targets"]["ip"], closed)
        assert handle.is_open
        after = await http_get_sha256(handle, "target.test", f["path"])
        handle.close()
        return err.value, after

    refused, (status, digest, _) = run(go)
    # The END reason is the relay's, surfaced as is.  C tor 0.4.9 exits send MISC, not
    # CONNECTREFUSED, for a refused connect that completes asynchronously (connection.c reads
    # the error with getsockopt(SO_ERROR) but connection_edge_end_errno() maps the global errno);
    # the C tor client sees the same (SOCKS5 reply 1, "general failure", not 5).
    assert refused.reason in (EndReason.CONNECTREFUSED, EndReason.MISC), refused
    assert EndReason.describe(refused.reason) in str(refused), refused
    assert status == 200 and digest == f["sha256"]


def test_exit_policy_reject_gives_exitpolicy_and_circuit_survives(
    testnet: TestNetwork, relays: RelayNet
) -> None:
    rejected, _ = _policy_ports(testnet.info)
    f = testnet.info["targets"]["files"]["1MiB"]

    async def go(chanmgr: ChannelManager) -> tuple[StreamRefused, tuple[int, str, int], bool]:
        handle = await relays.build(chanmgr, "guard2", "middle1", "exit2")
        with pytest.raises(StreamRefused) as err:
            await open_tcp(handle, testnet.info["targets"]["ip"], rejected)
        # Our own view of exit2's policy agrees with the relay.
        allowed = relays.by_name["exit2"].policy.allows(rejected)
        after = await http_get_sha256(handle, "target.test", f["path"])
        handle.close()
        return err.value, after, allowed

    refused, (status, digest, _), allowed = run(go)
    assert not allowed
    assert refused.reason == EndReason.EXITPOLICY, refused
    assert status == 200 and digest == f["sha256"]


def test_circuit_state_after_close(testnet: TestNetwork, relays: RelayNet) -> None:
    """A closed circuit refuses new streams instead of hanging (sanity for the tests above)."""

    async def go(chanmgr: ChannelManager) -> CircuitState:
        handle = await relays.build(chanmgr, "guard1", "middle1", "exit1")
        handle.close()
        with pytest.raises(RuntimeError):
            handle.tunnel.open_stream(
                TorStreamTransport(asyncio.get_running_loop(), "x", handle.reactor), "x", 80
            )
        return handle.tunnel.state

    assert run(go) is CircuitState.CLOSED


# --------------------------------------------------------------------------- server speaks first


def client_config(info: NetworkInfo, data_dir: Any) -> Any:
    """A TorConfig for the private network, through the torrc parser like tor-client's."""
    from puretor.config import load_config

    torrc = data_dir / "torrc"
    torrc.write_text(
        "\n".join(
            [
                "TestingTorNetwork 1",
                f"DataDirectory {data_dir / 'data'}",
                "UseDefaultFallbackDirs 0",
                "SocksPort 0",
                *info["dir_authority_lines"],
            ]
        )
        + "\n"
    )
    return load_config(["-f", str(torrc)])


def test_server_first_banner_is_not_lost(testnet: TestNetwork, tmp_path: Any) -> None:
    """SMTP/SSH/FTP-style servers speak first: their banner can arrive right behind CONNECTED."""
    import socket
    import threading

    from puretor.client import TorClient

    banner = b"220 banner.target.test ESMTP ready\r\n"
    # A listener of our own inside the namespace's target range (exit1 accepts every port).
    listener = socket.socket()
    listener.bind(("198.18.0.30", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.sendall(banner)
            threading.Timer(0.5, conn.close).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    config = client_config(testnet.info, tmp_path)

    async def go() -> list[bytes]:
        tor = TorClient(config)
        try:
            await asyncio.wait_for(tor.bootstrap(), 60)

            async def one() -> bytes:
                reader, writer = await tor.open_connection("198.18.0.30", port)
                try:
                    return await asyncio.wait_for(reader.readline(), 10)
                finally:
                    writer.close()

            got: list[bytes] = []
            for _ in range(3):  # concurrency makes the loop busy between CONNECTED and attach
                got += await asyncio.gather(*(one() for _ in range(40)))
            return got
        finally:
            await tor.aclose()

    try:
        got = asyncio.run(go())
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    lost = sum(1 for g in got if g != banner)
    assert lost == 0, f"{lost} of {len(got)} banners lost"
