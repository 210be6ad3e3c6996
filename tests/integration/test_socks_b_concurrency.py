"""tor-client acceptance: 50 concurrent curl downloads, and SOCKS username/password isolation
(different credentials -> different circuits, observed as different exits; the same
credentials keep their circuit)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ptclient
import pytest
from ptclient import PtClient

pytestmark = pytest.mark.testnet
tor_daemon = ptclient.tor_daemon  # the session's shared daemon (a fixture)

URL_KINDS = ("http_host", "http_ip", "https_host", "https_ip")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_50_concurrent_curl_downloads(
    tor_daemon: PtClient, testnet_info: Any, tmp_path: Path
) -> None:
    files = testnet_info["targets"]["files"]
    jobs = []
    for i in range(50):
        name = "10MiB" if i % 10 == 0 else "1MiB"  # 5 x 10 MiB + 45 x 1 MiB
        kind = URL_KINDS[i % len(URL_KINDS)]
        out = tmp_path / f"body-{i}"
        argv = tor_daemon.curl_argv(files[name]["urls"][kind], "--output", str(out), max_time=150)
        jobs.append((name, kind, out, argv))
    t0 = time.monotonic()
    procs = []
    try:
        for _name, _kind, _out, argv in jobs:
            procs.append(subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL))
        results = [p.communicate(timeout=170)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - t0
    failures = []
    for (name, kind, out, _argv), p, err in zip(jobs, procs, results, strict=True):
        if p.returncode != 0:
            failures.append(f"{name} {kind}: curl {p.returncode}: {err.decode().strip()}")
        elif _sha256_file(out) != files[name]["sha256"]:
            failures.append(f"{name} {kind}: wrong sha256 ({out.stat().st_size} bytes)")
    assert not failures, "\n".join(failures) + f"\n--- tor-client log ---\n{tor_daemon.log_tail()}"
    total = sum(files[name]["size"] for name, *_ in jobs)
    print(f"50 concurrent downloads, {total / 2**20:.0f} MiB in {elapsed:.1f}s")


@pytest.mark.options("SocksPort")
def test_socks_credentials_isolate_circuits(tor_daemon: PtClient, testnet_info: Any) -> None:
    targets = testnet_info["targets"]
    url = targets["ip_urls"]["http_host"]
    exits = set(targets["exit_addresses"])
    assert len(exits) == 2
    # Three groups of 20 credentials, given the ways clients give them: user:pass@ in the
    # proxy URL; --proxy-user with --socks5-hostname; one username, different passwords
    # (C tor isolates on both fields).
    groups: dict[str, list[tuple[str, str]]] = {
        "url": [(f"alice{i}", "pw") for i in range(20)],
        "proxy-user": [(f"bob{i}", "pw") for i in range(20)],
        "password": [("carol", f"pw{i}") for i in range(20)],
    }
    creds = [(g, u, p) for g, members in groups.items() for u, p in members]

    def fetch(cred: tuple[str, str, str]) -> str:
        group, user, password = cred
        if group == "proxy-user":
            out = tor_daemon.curl(url, "--proxy-user", f"{user}:{password}")
        else:
            out = tor_daemon.curl(url, user=user, password=password)
        return out.decode().strip()

    def two_rounds(pool: ThreadPoolExecutor) -> list[str]:
        first = list(pool.map(fetch, creds))
        second = list(pool.map(fetch, creds))
        assert set(first) | set(second) <= exits
        # Each credential keeps its circuit, so its exit, while the circuit lives.
        moved = [(c, a, b) for c, a, b in zip(creds, first, second, strict=True) if a != b]
        assert not moved, f"credentials changed exit within a circuit's life: {moved}"
        return first

    with ThreadPoolExecutor(max_workers=len(creds)) as pool:
        samples = [two_rounds(pool)]
        # NEWNYM: new circuits for new streams, so a second independent draw per credential.
        since = len(tor_daemon.log_text())
        tor_daemon.send_signal(signal.SIGUSR2)
        tor_daemon.wait_for_log(r"Received NEWNYM signal", since=since)
        samples.append(two_rounds(pool))
    # Different credentials never share a circuit, so each is an independent exit choice
    # (exit1 ~70 %). Streams wrongly sharing one circuit would all show one exit in every
    # sample; 20 independent picks all landing on one exit in both samples: ~1e-6.
    for group in groups:
        seen = [Counter(s[i] for i, c in enumerate(creds) if c[0] == group) for s in samples]
        print(f"{group}: exits per sample {[dict(c) for c in seen]}")
        assert any(len(c) == 2 for c in seen), f"{group}: one exit for all credentials: {seen}"
    # And no-auth traffic still works alongside.
    assert tor_daemon.fetch_ip(url) in exits
