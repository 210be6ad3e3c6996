"""tor-client acceptance: real SOCKS clients besides curl - httpx (socks5:// proxy),
python-socks, and headless Chromium - all get their pages through Tor, names resolved by the
exit, and the target only ever sees exits."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any

import ptclient
import pytest
from ptclient import PtClient, direct_sources
from python_socks.async_.asyncio import Proxy

from puretor.testnet.targets import read_source_log

pytestmark = pytest.mark.testnet
tor_daemon = ptclient.tor_daemon  # the session's shared daemon (a fixture)


def _ca_context(info: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=info["targets"]["ca_cert"])


def test_httpx_through_socks5_proxy(tor_daemon: PtClient, testnet_info: Any) -> None:
    import httpx

    targets = testnet_info["targets"]
    f = targets["files"]["10MiB"]

    async def main() -> None:
        # socks5:// in httpx sends the hostname to the proxy: the exit resolves it (this
        # namespace has no DNS, so a local lookup could not even succeed).
        proxy = tor_daemon.proxy_url("socks5")
        async with httpx.AsyncClient(
            proxy=proxy, verify=_ca_context(testnet_info), timeout=60
        ) as client:
            r = await client.get(f"http://{targets['hostname']}/")
            assert r.status_code == 200
            assert r.text == "puretor testnet target\n"
            r = await client.get(f["urls"]["https_host"])
            assert r.status_code == 200
            assert hashlib.sha256(r.content).hexdigest() == f["sha256"]
            r = await client.get(targets["ip_urls"]["https_host"])
            assert r.text.strip() in targets["exit_addresses"]
            body = os.urandom(300_000)
            r = await client.post(targets["upload_urls"]["http_host"], content=body)
            assert r.text.strip() == hashlib.sha256(body).hexdigest()
        # With credentials in the proxy URL (an isolation key for tor-client).
        proxy = tor_daemon.proxy_url("socks5", "httpx-user", "secret")
        async with httpx.AsyncClient(proxy=proxy, timeout=60) as client:
            r = await client.get(targets["ip_urls"]["http_host"])
            assert r.text.strip() in targets["exit_addresses"]

    asyncio.run(main())


def test_python_socks_client(tor_daemon: PtClient, testnet_info: Any) -> None:
    targets = testnet_info["targets"]
    f = targets["files"]["1MiB"]

    async def get(proxy: Any, host: str, port: int, path: str, tls: bool) -> bytes:
        sock = await proxy.connect(dest_host=host, dest_port=port, timeout=60)
        kwargs: dict[str, Any] = {}
        if tls:
            kwargs = {"ssl": _ca_context(testnet_info), "server_hostname": host}
        reader, writer = await asyncio.open_connection(sock=sock, **kwargs)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), 60)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
        return body

    async def main() -> None:
        proxy = Proxy.from_url(tor_daemon.proxy_url("socks5"), rdns=True)
        body = await get(proxy, targets["hostname"], 80, f["path"], tls=False)
        assert hashlib.sha256(body).hexdigest() == f["sha256"]
        body = await get(proxy, targets["tls_hostname"], 443, f["path"], tls=True)
        assert hashlib.sha256(body).hexdigest() == f["sha256"]
        authed = Proxy.from_url(tor_daemon.proxy_url("socks5", "ps-user", "pw"), rdns=True)
        seen = await get(authed, targets["ip"], 80, "/ip", tls=False)
        assert seen.decode().strip() in targets["exit_addresses"]

    asyncio.run(main())


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _run_chromium(binary: str, proxy_port: int, url: str, profile: Path) -> str:
    argv = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--proxy-server=socks5://127.0.0.1:{proxy_port}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its renderer/zygote children share our new group
        env={**os.environ, "HOME": str(profile)},
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        # Chromium's helpers are in the process group we created: end them all.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def test_headless_chromium_loads_pages(
    tor_daemon: PtClient, testnet_info: Any, tmp_path: Path
) -> None:
    binary = _chromium()
    if binary is None:
        reason = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} - CI is set, so this is a failure")
        pytest.skip(reason)
    targets = testnet_info["targets"]
    before = len(read_source_log(targets["source_log"]))
    # By name: Chromium hands socks5:// proxies the hostname (the exit resolves it).
    dom = _run_chromium(
        binary, tor_daemon.socks_port, f"http://{targets['hostname']}/", tmp_path / "p1"
    )
    assert "puretor testnet target" in dom, dom[:2000]
    # By IP, the page the target serves is the address it saw: an exit's.
    dom = _run_chromium(
        binary, tor_daemon.socks_port, targets["ip_urls"]["http_ip"], tmp_path / "p2"
    )
    assert any(a in dom for a in targets["exit_addresses"]), dom[:2000]
    assert "127.0.0.1" not in dom
    new = read_source_log(targets["source_log"])[before:]
    assert new, "Chromium's requests never reached the target"
    assert {r.ip for r in new} <= set(targets["exit_addresses"]), new
    assert not direct_sources(testnet_info)
