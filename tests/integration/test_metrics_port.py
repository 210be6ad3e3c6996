"""MetricsPort acceptance: promtool accepts the exposition, the counters move as downloads
run through the SOCKS and HTTP CONNECT ports, and MetricsPortPolicy refuses addresses it
does not accept (by default, everyone)."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ptclient
import pytest
from ptclient import PtClient

from puretor.testnet import netns

pytestmark = pytest.mark.testnet
tor_daemon_factory = ptclient.tor_daemon_factory

_METRICS = re.compile(r"Opened Metrics listener connection \(ready\) on 127\.0\.0\.1:(\d+)")
_HTTP = re.compile(r"Opened HTTP tunnel listener connection \(ready\) on 127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def metrics_daemon(testnet: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PtClient]:
    client = ptclient.start_tor_client(
        testnet.info,
        tmp_path_factory.mktemp("tor-client-metrics"),
        extra_options=[
            "MetricsPort auto",
            "MetricsPortPolicy accept 127.0.0.1",
            "HTTPTunnelPort auto",
        ],
    )
    try:
        text = client.log_text()
        client.metrics_port = int(_METRICS.search(text).group(1))  # type: ignore[attr-defined,union-attr]
        client.http_port = int(_HTTP.search(text).group(1))  # type: ignore[attr-defined,union-attr]
        yield client
    finally:
        client.stop()


def scrape(port: int, *, source: str = "127.0.0.1") -> bytes:
    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    return asyncio.run(get())


def samples(reply: bytes) -> dict[str, float]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK"), reply[:200]
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.options("MetricsPort", "MetricsPortPolicy")
def test_promtool_accepts_and_counters_move_with_downloads(
    metrics_daemon: PtClient, testnet_info: Any, tmp_path: Path
) -> None:
    port = int(metrics_daemon.metrics_port)  # type: ignore[attr-defined]
    before_reply = scrape(port)
    body = before_reply.partition(b"\r\n\r\n")[2]
    (tmp_path / "metrics.txt").write_bytes(body)
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    before = samples(before_reply)
    assert before["puretor_bootstrap_percent"] == 100
    assert before["puretor_circuits_built_total"] >= 1
    assert before["puretor_consensus_age_seconds"] >= 0
    assert before["puretor_process_open_fds"] > 0
    assert before["puretor_process_resident_memory_bytes"] > 10e6
    f = testnet_info["targets"]["files"]["10MiB"]
    out = tmp_path / "body"
    metrics_daemon.curl(f["urls"]["http_host"], "--output", str(out))
    argv = ["curl", "--silent", "--show-error", "--fail", "--max-time", "110", "--proxytunnel"]
    argv += ["--proxy", f"http://127.0.0.1:{metrics_daemon.http_port}"]  # type: ignore[attr-defined]
    argv += ["--output", str(out), f["urls"]["http_host"]]
    subprocess.run(netns.wrap(metrics_daemon.netns, argv), check=True, timeout=120)
    refused = (
        f"http://{testnet_info['targets']['hostname']}:{testnet_info['targets']['closed_port']}/"
    )
    with pytest.raises(ptclient.CurlError):
        metrics_daemon.curl(refused, timeout=60)
    after = samples(scrape(port))
    for kind in ("socks", "http_tunnel"):
        key = f'puretor_port_bytes_total{{direction="to_client",port_type="{kind}"}}'
        grown = after[key] - before.get(key, 0)
        print(f"{kind}: {grown / 2**20:.1f} MiB to clients during the downloads")
        assert grown >= f["size"], (kind, grown)
        opened = f'puretor_port_streams_opened_total{{port_type="{kind}"}}'
        assert after[opened] >= before.get(opened, 0) + 1
    failed = sum(
        v for k, v in after.items() if k.startswith("puretor_port_stream_failures_total")
    ) - sum(v for k, v in before.items() if k.startswith("puretor_port_stream_failures_total"))
    assert failed >= 1, "the refused stream was not counted"
    assert after["puretor_streams_opened_total"] >= before["puretor_streams_opened_total"] + 2


def test_addresses_outside_the_policy_are_refused(metrics_daemon: PtClient) -> None:
    port = int(metrics_daemon.metrics_port)  # type: ignore[attr-defined]
    assert scrape(port, source="127.0.0.2") == b""  # closed without a word
    assert scrape(port).startswith(b"HTTP/1.0 200 OK")


def test_no_policy_refuses_everyone(tor_daemon_factory: Any) -> None:
    daemon = tor_daemon_factory(extra_options=["MetricsPort auto"], wait=False)
    daemon.wait_for_log(r"Opened Metrics listener", timeout=60)
    port = int(_METRICS.search(daemon.log_text()).group(1))  # type: ignore[union-attr]
    assert scrape(port) == b""


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.0\r\n\r\n", b"405"),
        (b"GET /other HTTP/1.0\r\n\r\n", b"404"),
        (b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 9000, b"400"),
        (b"\x00\xff garbage\r\n\r\n", b"400"),
    ],
)
def test_hostile_requests_get_an_error(
    metrics_daemon: PtClient, request_bytes: bytes, status: bytes
) -> None:
    port = int(metrics_daemon.metrics_port)  # type: ignore[attr-defined]

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_bytes)
            return await asyncio.wait_for(reader.read(), 15)
        finally:
            writer.close()

    reply = asyncio.run(exchange())
    assert reply.split(b" ")[1] == status, reply[:100]
    assert scrape(port).startswith(b"HTTP/1.0 200 OK")


def test_sighup_applies_a_new_policy(tor_daemon_factory: Any) -> None:
    import signal

    daemon = tor_daemon_factory(
        extra_options=["MetricsPort auto", "MetricsPortPolicy accept 127.0.0.1"], wait=False
    )
    daemon.wait_for_log(r"Opened Metrics listener", timeout=60)
    port = int(_METRICS.search(daemon.log_text()).group(1))  # type: ignore[union-attr]
    assert scrape(port).startswith(b"HTTP/1.0 200 OK")
    text = daemon.torrc.read_text().replace(
        "MetricsPortPolicy accept 127.0.0.1", "MetricsPortPolicy accept 127.0.0.2"
    )
    daemon.torrc.write_text(text)
    since = len(daemon.log_text())
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"Configuration reloaded", since=since, timeout=30)
    assert scrape(port) == b""
    assert scrape(port, source="127.0.0.2").startswith(b"HTTP/1.0 200 OK")
