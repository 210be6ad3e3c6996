"""Bridges (UseBridges, Bridge) against the private network's C tor bridges, with the
authorities and every listed relay blocked for the client by the network's censor.

The censor (puretor.testnet.censor) drops packets of processes running with its group id to
every authority and listed relay address; the daemons here run under ``setpriv --regid``
with that group. The audit hook logs every connection the daemon makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from proxyserver import Forwarder
from test_zz_hardening_helpers import read_audit, start_daemon

from puretor.testnet.ctor_client import start_ctor_client
from puretor.testnet.network import TestNetwork


def _censored(info: Mapping[str, Any]) -> list[str]:
    censor = info.get("censor")
    if not censor:
        pytest.skip("the network has no censor (nft missing)")
    return ["setpriv", f"--regid={censor['gid']}", "--clear-groups", "--"]


def _bridge(info: Mapping[str, Any], transport: str | None = None) -> dict[str, Any]:
    for b in info.get("bridges", ()):
        if b["transport"] == transport:
            return dict(b)
    pytest.skip(f"the network has no {transport or 'plain'} bridge")


def _daemon(
    net: TestNetwork,
    workdir: Path,
    bridge_lines: Sequence[str],
    *,
    wait: bool = True,
    extra: Sequence[str] = (),
) -> Any:
    info = net.info
    lines = [
        "SocksPort 127.0.0.1:auto",
        "Log info stdout",
        "SafeLogging 0",
        "UseBridges 1",
        *(f"Bridge {line}" for line in bridge_lines),
        *extra,
    ]
    return start_daemon(info, workdir, lines, wrap=_censored(info), wait=wait)


def _channel_targets(workdir: Path) -> set[tuple[str, int, str]]:
    """(address, port, identity) of every channel and every TCP connect in the audit log."""
    out = set()
    for ev in read_audit(workdir / "audit.jsonl"):
        if ev[0] == "channel":
            out.add((ev[1][0], int(ev[1][1]), ev[1][2].upper()))
        elif ev[0] == "connect":
            out.add((ev[1][0], int(ev[1][1]), "tcp"))
        elif ev[0] == "program":  # a process started: (event, its arguments)
            out.add((str(ev[2]), 0, "program"))
        elif ev[0] != "resolve":
            out.add((str(ev[1]), 0, "other"))
    return out


def test_the_censor_blocks_the_directory(testnet: TestNetwork) -> None:
    """What the censor does to a censored process: an authority's DirPort stays silent."""
    info = testnet.info
    wrap = _censored(info)
    auth = info["authorities"][0]
    before = testnet.dropped_packets()
    proc = subprocess.run(
        [*wrap, "curl", "-s", "-m", "2", f"http://{auth['address']}:{auth['dirport']}/"],
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 28, proc  # curl: operation timed out
    assert testnet.dropped_packets() > before


@pytest.mark.options("UseBridges", "Bridge")
def test_plain_bridge_is_the_only_way_in(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    bridge = _bridge(info)
    before = testnet.dropped_packets()
    t0 = time.monotonic()
    client = _daemon(testnet, tmp_path, [bridge["bridge_line"]])
    try:
        boot = time.monotonic() - t0
        log = client.log_text()
        assert f"new bridge descriptor '{bridge['nickname']}' (fresh)" in log
        f = info["targets"]["files"]["10MiB"]
        body = client.curl(f["urls"]["http_host"])
        assert len(body) == f["size"] and hashlib.sha256(body).hexdigest() == f["sha256"]
    finally:
        client.stop()
    # Every connection went to the bridge's ORPort, proving the bridge's identity.
    targets = _channel_targets(tmp_path)
    assert targets, "the audit log is empty"
    allowed = {(bridge["address"], bridge["orport"], bridge["fingerprint"])}
    allowed.add((bridge["address"], bridge["orport"], "tcp"))
    assert targets <= allowed, targets - allowed
    # ... and it never even tried a blocked address.
    assert testnet.dropped_packets() == before
    # The bridge is the persisted guard (C tor's separate "bridges" guard selection).
    state = json.loads((tmp_path / "data" / "state-bridges.json").read_text())
    assert [g["rsa_id"] for g in state["guards"]] == [bridge["fingerprint"]]
    assert state["guards"][0]["confirmed_idx"] == 0
    print(f"bootstrap through the plain bridge: {boot:.1f}s")
    # A restart with that DataDirectory: the cached consensus, the same (confirmed) bridge.
    again = start_daemon(
        info,
        tmp_path / "again",
        [
            "SocksPort 127.0.0.1:auto",
            "Log info stdout",
            "UseBridges 1",
            f"Bridge {bridge['bridge_line']}",
        ],
        wrap=_censored(info),
        data_dir=tmp_path / "data",
    )
    try:
        assert "Bootstrapping from the directory cache" in again.log_text()
        assert (
            again.fetch_ip(info["targets"]["ip_urls"]["http_host"])
            in info["targets"]["exit_addresses"]
        )
    finally:
        again.stop()
    assert {t[:2] for t in _channel_targets(tmp_path / "again")} == {
        (bridge["address"], bridge["orport"])
    }
    state = json.loads((tmp_path / "data" / "state-bridges.json").read_text())
    assert [(g["rsa_id"], g["confirmed_idx"]) for g in state["guards"]] == [
        (bridge["fingerprint"], 0)
    ]
    assert testnet.dropped_packets() == before


def test_wrong_fingerprint_is_refused(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    bridge = _bridge(info)
    wrong = info["relays"][0]["fingerprint"]
    line = f"{bridge['address']}:{bridge['orport']} {wrong}"
    client = _daemon(testnet, tmp_path, [line], wait=False)
    try:
        m = client.wait_for_log(r"\[warn\] Problem bootstrapping\. Stuck at .*", timeout=40)
        assert "IDENTITY" in m.group(0), m.group(0)
        assert "Bootstrapped 100%" not in client.log_text()
    finally:
        client.stop()
    assert {t[:2] for t in _channel_targets(tmp_path)} <= {(bridge["address"], bridge["orport"])}


def test_unreachable_bridge_gives_the_bootstrap_warning(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    bridge = _bridge(testnet.info)
    line = f"{bridge['address']}:1 {bridge['fingerprint']}"  # nothing listens on port 1
    client = _daemon(testnet, tmp_path, [line], wait=False)
    try:
        m = client.wait_for_log(
            r"\[warn\] Problem bootstrapping\. Stuck at 5% \(conn\): Connecting to a relay\. "
            r"\(Connection refused; CONNECTREFUSED; .*",
            timeout=30,
        )
        assert f"{bridge['address']}:1" in m.group(0)
    finally:
        client.stop()


def _children_named(pid: int, name: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        if comm == name and int(rest.split()[1]) == pid and rest[0] != "Z":
            out.append(int(entry.name))
    return out


@pytest.mark.options("ClientTransportPlugin")
def test_obfs4_bridge_with_managed_obfs4proxy(testnet: TestNetwork, tmp_path: Path) -> None:
    """Bootstrap and fetch through the obfs4 bridge with Debian's obfs4proxy as a managed
    transport; then kill the proxy mid-download: the stream fails, the proxy is restarted,
    and the next fetch works."""
    info = testnet.info
    bridge = _bridge(info, "obfs4")
    obfs4proxy = shutil.which("obfs4proxy")
    if obfs4proxy is None:
        pytest.skip("obfs4proxy is not installed")
    before = testnet.dropped_packets()
    extra = [
        "SocksPort 127.0.0.1:auto",
        "Log info stdout",
        "SafeLogging 0",
        "UseBridges 1",
        f"Bridge {bridge['bridge_line']}",
        f"ClientTransportPlugin obfs4 exec {obfs4proxy}",
    ]
    t0 = time.monotonic()
    client = start_daemon(info, tmp_path, extra, wrap=_censored(info))
    try:
        print(f"puretor bootstrap through the obfs4 bridge: {time.monotonic() - t0:.1f}s")
        log = client.log_text()
        assert "Bootstrapped 1% (conn_pt): Connecting to pluggable transport" in log
        assert "Registered client transport 'obfs4'" in log
        f = info["targets"]["files"]["10MiB"]
        body = client.curl(f["urls"]["http_host"])
        assert len(body) == f["size"] and hashlib.sha256(body).hexdigest() == f["sha256"]
        assert (tmp_path / "data" / "pt_state").is_dir()  # TOR_PT_STATE_LOCATION

        # Kill the proxy in the middle of a big download.
        [pt_pid] = _children_named(client.pid, "obfs4proxy")
        big = info["targets"]["files"]["100MiB"]["urls"]["http_host"]
        curl = subprocess.Popen(
            client.curl_argv(big, "--limit-rate", "5M", max_time=60),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        os.kill(pt_pid, signal.SIGKILL)
        assert curl.wait(timeout=60) != 0  # the stream failed, cleanly and soon
        client.wait_for_log(r"Managed proxy at '.*obfs4proxy' died", timeout=10)
        deadline = time.monotonic() + 60
        while not [p for p in _children_named(client.pid, "obfs4proxy") if p != pt_pid]:
            assert time.monotonic() < deadline, client.log_tail()
            time.sleep(0.1)
        small = info["targets"]["files"]["1MiB"]
        body = _curl_retrying(client, small["urls"]["http_host"], deadline=time.monotonic() + 60)
        assert hashlib.sha256(body).hexdigest() == small["sha256"]
    finally:
        client.stop()
    assert not _children_named(client.pid, "obfs4proxy")
    targets = _channel_targets(tmp_path)
    for address, port, what in targets:
        if what == "program":
            assert obfs4proxy in address, targets  # the managed proxy, nothing else
        elif what == "tcp":
            assert address == "127.0.0.1", targets  # only the proxy's local SOCKS port
        else:
            assert (address, port, what) == (
                bridge["transport_address"],
                bridge["transport_port"],
                bridge["fingerprint"],
            ), targets
    assert testnet.dropped_packets() == before


def _curl_retrying(client: Any, url: str, *, deadline: float) -> bytes:
    while True:
        try:
            return bytes(client.curl(url, timeout=40))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def test_ctor_reference_with_the_same_bridge_lines(testnet: TestNetwork, tmp_path: Path) -> None:
    """C tor as a client with the same Bridge and ClientTransportPlugin lines, censored the
    same way: the reference (the network's bridges work for C tor, and it too never tries a
    blocked address)."""
    info = testnet.info
    bridge = _bridge(info, "obfs4")
    obfs4proxy = shutil.which("obfs4proxy")
    if obfs4proxy is None:
        pytest.skip("obfs4proxy is not installed")
    before = testnet.dropped_packets()
    t0 = time.monotonic()
    client = start_ctor_client(
        info,
        tmp_path,
        client_auth=False,
        extra_torrc=[
            "UseBridges 1",
            f"Bridge {bridge['bridge_line']}",
            f"ClientTransportPlugin obfs4 exec {obfs4proxy}",
        ],
        wrap=_censored(info),
    )
    try:
        boot = time.monotonic() - t0
        f = info["targets"]["files"]["10MiB"]
        body = client.curl(f["urls"]["http_host"])
        assert hashlib.sha256(body).hexdigest() == f["sha256"]
    finally:
        client.stop()
    assert testnet.dropped_packets() == before
    print(f"C tor bootstrap through the obfs4 bridge: {boot:.1f}s")


def test_external_socks5_transport(testnet: TestNetwork, tmp_path: Path) -> None:
    """``ClientTransportPlugin obfs4 socks5 IP:PORT``: a transport proxy someone else runs
    (here obfs4proxy started by the test, censored like the client)."""
    info = testnet.info
    bridge = _bridge(info, "obfs4")
    obfs4proxy = shutil.which("obfs4proxy")
    if obfs4proxy is None:
        pytest.skip("obfs4proxy is not installed")
    env = dict(
        os.environ,
        TOR_PT_MANAGED_TRANSPORT_VER="1",
        TOR_PT_STATE_LOCATION=str(tmp_path / "external-pt"),
        TOR_PT_CLIENT_TRANSPORTS="obfs4",
        TOR_PT_EXIT_ON_STDIN_CLOSE="1",
    )
    proxy = subprocess.Popen(
        [*_censored(info), obfs4proxy],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proxy.stdout is not None
        port = 0
        for raw in proxy.stdout:
            line = raw.decode().strip()
            if line.startswith("CMETHOD obfs4 socks5 "):
                port = int(line.rsplit(":", 1)[1])
            if line == "CMETHODS DONE":
                break
        assert port, "obfs4proxy offered no obfs4 method"
        extra = [
            "SocksPort 127.0.0.1:auto",
            "Log info stdout",
            "SafeLogging 0",
            "UseBridges 1",
            f"Bridge {bridge['bridge_line']}",
            f"ClientTransportPlugin obfs4 socks5 127.0.0.1:{port}",
        ]
        client = start_daemon(info, tmp_path, extra, wrap=_censored(info))
        try:
            f = info["targets"]["files"]["1MiB"]
            body = client.curl(f["urls"]["http_host"])
            assert hashlib.sha256(body).hexdigest() == f["sha256"]
        finally:
            client.stop()
        events = _channel_targets(tmp_path)
        assert ("127.0.0.1", port, "tcp") in events
        assert all(what != "program" for _, _, what in events)  # nothing started by us
    finally:
        if proxy.stdin is not None:
            proxy.stdin.close()  # TOR_PT_EXIT_ON_STDIN_CLOSE
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def test_bridge_line_without_fingerprint(testnet: TestNetwork, tmp_path: Path) -> None:
    """C tor accepts a Bridge line without fingerprint and learns it from the bridge."""
    bridge = _bridge(testnet.info)
    client = _daemon(testnet, tmp_path, [f"{bridge['address']}:{bridge['orport']}"])
    try:
        client.wait_for_log(
            f"Learned fingerprint {bridge['fingerprint']} for bridge "
            f"{bridge['address']}:{bridge['orport']}.",
            timeout=5,
        )
        f = testnet.info["targets"]["files"]["1MiB"]
        assert hashlib.sha256(client.curl(f["urls"]["http_host"])).hexdigest() == f["sha256"]
    finally:
        client.stop()
    assert {t[:2] for t in _channel_targets(tmp_path)} == {(bridge["address"], bridge["orport"])}


def test_obfs4_traffic_is_not_tls(testnet: TestNetwork, tmp_path: Path) -> None:
    """What a censor sees: through the obfs4 bridge the first bytes are no TLS ClientHello
    (a TLS handshake record starts 0x16 0x03), while the plain bridge gets one."""
    info = testnet.info
    obfs4, plain = _bridge(info, "obfs4"), _bridge(info)
    obfs4proxy = shutil.which("obfs4proxy")
    if obfs4proxy is None:
        pytest.skip("obfs4proxy is not installed")
    with (
        Forwarder((obfs4["transport_address"], obfs4["transport_port"])) as fw_obfs4,
        Forwarder((plain["address"], plain["orport"])) as fw_plain,
    ):
        args = " ".join(f"{k}={v}" for k, v in obfs4["transport_args"].items())
        client = _daemon(
            testnet,
            tmp_path,
            [
                f"obfs4 127.0.0.1:{fw_obfs4.port} {obfs4['fingerprint']} {args}",
                f"127.0.0.1:{fw_plain.port} {plain['fingerprint']}",
            ],
            extra=[f"ClientTransportPlugin obfs4 exec {obfs4proxy}"],
        )
        client.stop()
        assert fw_obfs4.first_bytes and fw_plain.first_bytes
        assert all(b[:2] != b"\x16\x03" for b in fw_obfs4.first_bytes), fw_obfs4.first_bytes
        assert all(b[:2] == b"\x16\x03" for b in fw_plain.first_bytes)
