"""tor-client acceptance: bootstrap like C tor, then curl --socks5-hostname fetches files by
hostname and by IP, over HTTP and HTTPS (TLS end to end through the stream), with the right
sha256; the target sees an exit's address, never the client's."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import ptclient
import pytest
from ptclient import BOOTSTRAP_LINE, BOOTSTRAP_PHASES, CurlError, PtClient

pytestmark = pytest.mark.testnet
tor_daemon = ptclient.tor_daemon  # the session's shared daemon (a fixture)
tor_daemon_factory = ptclient.tor_daemon_factory


def test_bootstrap_log_has_c_tor_phases_in_order(tor_daemon: PtClient, testnet: Any) -> None:
    log = tor_daemon.log_text()
    phases = [(int(p), tag, summary) for p, tag, summary in BOOTSTRAP_LINE.findall(log)]
    assert phases, f"no Bootstrapped lines:\n{tor_daemon.log_tail()}"
    percents = [p for p, _, _ in phases]
    assert percents == sorted(set(percents)), f"not strictly increasing: {percents}"
    for percent, tag, summary in phases:
        assert (tag, summary) == BOOTSTRAP_PHASES.get(percent), (percent, tag, summary)
    assert phases[-1] == (100, "done", "Done")
    assert "Bootstrapped 100% (done): Done" in log
    # The listener opens before bootstrapping, with C tor's message.
    assert re.search(r"Opened Socks listener connection \(ready\) on 127\.0\.0\.1:\d+", log)
    # Our table is C tor's: every phase the network's own C tor processes logged agrees.
    seen = 0
    for node in testnet.info["relays"]:
        text = Path(node["log"]).read_text(errors="replace")
        for p, tag, summary in BOOTSTRAP_LINE.findall(text):
            assert BOOTSTRAP_PHASES[int(p)] == (tag, summary), (node["nickname"], p, tag)
            seen += 1
    assert seen > 0
    print(f"tor-client bootstrapped in {tor_daemon.bootstrap_seconds:.1f}s")


# 1 and 10 MiB every way; 100 MiB twice (HTTP by name, HTTPS by IP): ~10 s each.
FETCHES = [
    ("1MiB", "http_host"),
    ("1MiB", "http_ip"),
    ("1MiB", "https_host"),
    ("1MiB", "https_ip"),
    ("10MiB", "http_host"),
    ("10MiB", "http_ip"),
    ("10MiB", "https_host"),
    ("10MiB", "https_ip"),
    ("100MiB", "http_host"),
    ("100MiB", "https_ip"),
]


@pytest.mark.parametrize(("name", "how"), FETCHES, ids=[f"{n}-{h}" for n, h in FETCHES])
def test_curl_fetches_file(
    tor_daemon: PtClient, testnet_info: Any, tmp_path: Path, name: str, how: str
) -> None:
    f = testnet_info["targets"]["files"][name]
    url = f["urls"][how]
    out = tmp_path / "body"
    t0 = time.monotonic()
    tor_daemon.curl(url, "--output", str(out), timeout=180)
    elapsed = time.monotonic() - t0
    assert out.stat().st_size == f["size"]
    digest = hashlib.sha256()
    with out.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == f["sha256"]
    print(f"{name} {how}: {elapsed:.2f}s, {f['size'] / elapsed / 1e6:.1f} MB/s")


@pytest.mark.parametrize("how", ["http_host", "http_ip", "https_host", "https_ip"])
def test_target_sees_an_exit_address(tor_daemon: PtClient, testnet_info: Any, how: str) -> None:
    targets = testnet_info["targets"]
    seen = tor_daemon.fetch_ip(targets["ip_urls"][how])
    assert seen in targets["exit_addresses"]
    assert seen != "127.0.0.1"  # the client's own address: a direct connection


def test_https_certificate_is_checked_end_to_end(
    tor_daemon: PtClient, testnet_info: Any, tmp_path: Path
) -> None:
    # TLS runs between curl and the target through the stream: trusting some other CA,
    # curl must refuse the certificate (60), so nothing in between terminated TLS for it.
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(_self_signed_ca_pem())
    url = testnet_info["targets"]["ip_urls"]["https_host"]
    with pytest.raises(CurlError) as err:
        tor_daemon.curl(url, cacert=str(other_ca))
    assert err.value.returncode == 60, err.value


def _self_signed_ca_pem() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the testnet CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("flag", ["--socks4a", "--socks4"])
def test_curl_socks4_and_4a(tor_daemon: PtClient, testnet_info: Any, flag: str) -> None:
    targets = testnet_info["targets"]
    # SOCKS4a sends the name (the exit resolves it); SOCKS4 can only carry an IPv4 address.
    url = targets["ip_urls"]["http_host" if flag == "--socks4a" else "http_ip"]
    argv = ["curl", "--silent", "--show-error", "--fail", "--max-time", "60"]
    argv += [flag, tor_daemon.socks_address, url]
    seen = subprocess.run(argv, capture_output=True, timeout=90, check=True).stdout.decode()
    assert seen.strip() in targets["exit_addresses"]


def test_sigterm_shuts_down_cleanly(tor_daemon_factory: Any) -> None:
    daemon = tor_daemon_factory()
    assert daemon.stop() == 0
    assert "Clean shutdown finished. Exiting." in daemon.log_text()
