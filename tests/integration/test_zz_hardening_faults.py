"""Hardening, faults: what puretor does when parts of the world misbehave.

* a directory authority is down at a cold start: bootstrap goes on from the others (the
  dead one is tried first, on purpose); the authority is restarted and the module waits
  until a consensus signed by all three lists every relay again;
* a "relay" that completes TLS and then never says a word (a listener of our own on
  loopback): a clear link-handshake timeout, no hang, and other streams carry on meanwhile;
  configured as a FallbackDir and tried first, bootstrap still succeeds;
* an expired cached consensus at start (a DataDirectory copied at the start of this module,
  used once its consensus is past valid-until): used while reasonably live, and replaced by
  a fetched one at once; past the 24 h "reasonably live" limit (a faked clock) it is not
  used at all;
* an unusable DataDirectory: a file in its place and a read-only bind mount stop
  ``tor-client`` at start with one clear line; a full disk (a filled tmpfs) only costs
  warnings, the daemon keeps serving and leaves no half-written files.

Killing an exit or a guard is covered by test_socks_zz_exit_kill.py and
test_paths_zz_faults.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_zz_hardening_helpers import (
    AUDIT,
    audit_problems,
    curl_via,
    read_audit,
    start_daemon,
)

import puretor.aio.channel as channel_mod
import puretor.aio.dirmgr as dirmgr_mod
from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.client import TorClient
from puretor.config import load_config
from puretor.dir.cache import CONSENSUS_FILE, DirCache
from puretor.dir.verify import REASONABLY_LIVE
from puretor.errors import ChannelError
from puretor.testnet import TestNetwork, consensus

pytestmark = pytest.mark.testnet

VICTIM = "auth2"


# --------------------------------------------------------------------------- helpers


def torrc_config(info: Any, workdir: Path, *extra: str) -> Any:
    """A TorConfig for the private network, as tor-client would read it."""
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
                *extra,
            ]
        )
        + "\n"
    )
    return load_config(["-f", str(torrc)])


def prefer_first(monkeypatch: pytest.MonkeyPatch, address: str, port: int) -> list[str]:
    """Make the directory manager pick the source at address:port whenever it may (it
    picks at random): the fault is then certain to be met. Returns the picks made."""
    picks: list[str] = []
    real = dirmgr_mod.secrets.choice

    def choice(seq: Any) -> Any:
        for hop in seq:
            target = getattr(hop, "target", None)
            if target is not None and (target.address, target.or_port) == (address, port):
                picks.append(f"{address}:{port}")
                return hop
        return real(seq)

    monkeypatch.setattr(dirmgr_mod.secrets, "choice", choice)
    return picks


async def fetch_ip(tor: TorClient, timeout: float = 60.0) -> str:
    reader, writer = await tor.open_connection("target.test", 80, timeout=timeout)
    try:
        writer.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head[:80]
    return body.decode().strip()


def _utc(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC)


def wait_network_healthy(testnet: TestNetwork, after: float, timeout: float = 150.0) -> None:
    """Until a consensus voted after `after`, signed by every authority, lists every relay
    with its flags - read from each authority's own cache."""
    info = testnet.info
    expected = {
        r["fingerprint"]: (r["nickname"], frozenset(r["expected_flags"]))
        for r in info["relays"]
        if r["fingerprint"]
    }
    n_auth = len(info["authorities"])
    since = datetime.datetime.fromtimestamp(after, datetime.UTC)
    deadline = time.monotonic() + timeout
    while True:
        ok = True
        for auth in info["authorities"]:
            path = Path(auth["data_dir"]) / "cached-microdesc-consensus"
            try:
                c = consensus.parse(path.read_text(errors="replace"))
            except (OSError, ValueError, IndexError):
                ok = False
                break
            if (
                _utc(c.valid_after) <= since
                or c.signatures < n_auth
                or consensus.missing_flags(c, expected)
            ):
                ok = False
                break
        if ok:
            return
        assert time.monotonic() < deadline, "the network did not recover in time"
        time.sleep(1.0)


@pytest.fixture(scope="module")
def early_cache(testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DataDirectory bootstrapped at the start of the module, copied away: its consensus
    will have expired (valid-until is ~60 s out) by the time the last test uses it."""
    work = tmp_path_factory.mktemp("hardening-early")
    config = torrc_config(testnet.info, work)

    async def boot() -> None:
        async with TorClient(config, bootstrap_timeout=90) as tor:
            await fetch_ip(tor)

    asyncio.run(boot())
    copy = work / "copy"
    shutil.copytree(work / "data", copy)
    return copy


# --------------------------------------------------------------------------- authority down


def test_cold_start_with_an_authority_down(
    testnet: TestNetwork,
    early_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = testnet.info
    auth = next(a for a in info["authorities"] if a["nickname"] == VICTIM)
    picks = prefer_first(monkeypatch, auth["address"], int(auth["orport"]))
    testnet.stop_authority(VICTIM)
    try:
        # In-process: the dead authority is tried first, then the others.
        config = torrc_config(info, tmp_path / "lib")
        t0 = time.monotonic()

        async def cold() -> tuple[str, int]:
            async with TorClient(config, bootstrap_timeout=90) as tor:
                ip = await fetch_ip(tor)
                return ip, tor._dirmgr.requests_made

        ip, requests = asyncio.run(cold())
        took = time.monotonic() - t0
        print(f"cold start with {VICTIM} down: bootstrapped and fetched in {took:.1f}s")
        assert picks, "the dead authority was never tried"
        assert ip in info["targets"]["exit_addresses"]
        assert requests > 0
        assert took < 60
        # The daemon, cold, with the authority still down.
        daemon = start_daemon(info, tmp_path / "daemon", timeout=90)
        try:
            out = curl_via(daemon, info["targets"]["ip_urls"]["http_host"])
            assert out.returncode == 0, out.stderr
            assert out.stdout.decode().strip() in info["targets"]["exit_addresses"]
            assert "Traceback" not in daemon.log_text()
        finally:
            daemon.stop()
        assert not audit_problems(read_audit(daemon.workdir / "audit.jsonl"), info)
    finally:
        testnet.start_node(VICTIM)
        t1 = time.monotonic()
        wait_network_healthy(testnet, after=time.time())
        print(f"{VICTIM} back in a consensus signed by all after {time.monotonic() - t1:.1f}s")


# --------------------------------------------------------------------------- a stalling relay


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.stall.net")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "stall.crt", tmp / "stall.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class StallingRelay:
    """Accepts TCP, completes the TLS handshake, then reads and never answers."""

    def __init__(self, tmp: Path, host: str = "127.0.0.1") -> None:
        cert, key = _self_signed(tmp)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.address, self.port = self.sock.getsockname()[:2]
        self.accepted = 0
        self.tls_done = 0
        self.bytes_in = 0
        self.closed_by_peer = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        t = threading.Thread(target=self._serve, name="stall-accept", daemon=True)
        t.start()
        self._threads.append(t)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.accepted += 1
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            return
        with self._lock:
            self.tls_done += 1
            self._conns.append(tls)
        tls.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = tls.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self.closed_by_peer += 1
                break
            with self._lock:
                self.bytes_in += len(data)  # the VERSIONS cell; never answered
        tls.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def stalling_relay(tmp_path: Path) -> Iterator[StallingRelay]:
    relay = StallingRelay(tmp_path)
    try:
        yield relay
    finally:
        relay.close()


@pytest.mark.options("FallbackDir")
def test_relay_that_stalls_after_tls(
    testnet: TestNetwork,
    stalling_relay: StallingRelay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = testnet.info
    stall = stalling_relay
    fake_id = bytes.fromhex("5" * 40)
    AUDIT.allowed_extra.add((stall.address, stall.port))
    # Configured as a FallbackDir and picked first by a cold-starting client.
    fallback = f"FallbackDir {stall.address}:{stall.port} orport={stall.port} id={fake_id.hex()}"
    config = torrc_config(info, tmp_path / "cold", fallback)
    picks = prefer_first(monkeypatch, stall.address, stall.port)
    busy = torrc_config(info, tmp_path / "busy")

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with TorClient(busy, bootstrap_timeout=90) as tor:
            await fetch_ip(tor)

            async def direct() -> None:
                # A ChannelTarget straight at it (a manager without an allow check).
                mgr = ChannelManager()
                t0 = time.monotonic()
                with pytest.raises(ChannelError) as err:
                    await mgr.get_channel(ChannelTarget(stall.address, stall.port, fake_id))
                out["direct"] = (time.monotonic() - t0, str(err.value))
                mgr.close_all()

            async def cold() -> None:
                t0 = time.monotonic()
                async with TorClient(config, bootstrap_timeout=120) as cold_tor:
                    out["cold_bootstrap"] = time.monotonic() - t0
                    out["cold_ip"] = await fetch_ip(cold_tor)

            async def meanwhile() -> None:
                # Other work goes on while both stall: fresh streams on the busy client.
                times = []
                t_end = time.monotonic() + channel_mod.HANDSHAKE_TIMEOUT
                while time.monotonic() < t_end:
                    t0 = time.monotonic()
                    await fetch_ip(tor, timeout=30)
                    times.append(time.monotonic() - t0)
                    await asyncio.sleep(0.5)
                out["meanwhile"] = times

            await asyncio.wait_for(asyncio.gather(direct(), cold(), meanwhile()), 150)
        return out

    out = asyncio.run(main())
    print(
        f"stalling relay: direct channel failed after {out['direct'][0]:.1f}s "
        f"({out['direct'][1]}); cold start with it as first fallback took "
        f"{out['cold_bootstrap']:.1f}s; {len(out['meanwhile'])} streams meanwhile, "
        f"slowest {max(out['meanwhile']):.1f}s"
    )
    took, message = out["direct"]
    limit = channel_mod.HANDSHAKE_TIMEOUT
    assert "link handshake" in message and "timed out" in message, message
    assert limit - 1 <= took < limit + 5
    assert picks, "the stalling fallback was never tried"
    assert out["cold_bootstrap"] < limit + 60
    assert out["cold_ip"] in info["targets"]["exit_addresses"]
    assert len(out["meanwhile"]) >= 5 and max(out["meanwhile"]) < 10
    # Both connections reached TLS, sent their VERSIONS cell, and were closed by puretor.
    deadline = time.monotonic() + 5
    while stall.closed_by_peer < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stall.tls_done >= 2 and stall.bytes_in > 0
    assert stall.closed_by_peer == stall.tls_done, "a stalled connection was left open"


# --------------------------------------------------------------------------- expired cache


def _authorities(info: Any) -> Any:
    from puretor.dir.authorities import parse_dir_authority_line

    return [
        parse_dir_authority_line(line.split(None, 1)[1]) for line in info["dir_authority_lines"]
    ]


def test_expired_cached_consensus(testnet: TestNetwork, early_cache: Path, tmp_path: Path) -> None:
    info = testnet.info
    auths = _authorities(info)
    data = tmp_path / "data"
    shutil.copytree(early_cache, data)
    raw_before = (data / CONSENSUS_FILE).read_bytes()
    probe = DirCache(data, auths).load(time.time())
    assert probe.consensus is not None
    va, _, vu = probe.consensus.lifetime
    # Wait (if the tests before did not take long enough) until it has expired.
    while time.time() <= vu + 1:
        time.sleep(0.5)
    # Past the 24 h "reasonably live" rule (a faked clock): not used at all.
    too_old = vu + REASONABLY_LIVE + 60
    stale_cache = DirCache(data, auths)
    stale = stale_cache.load(too_old)
    assert stale.consensus is None and stale.netdir(too_old) is None
    assert not stale.have_enough_dir_info(too_old)
    assert any("expired" in p for p in stale_cache.problems), stale_cache.problems
    assert stale.next_requests(too_old)[0].kind == "consensus"
    # Within it (23 h late): usable, and a new one is wanted at once.
    late = vu + REASONABLY_LIVE - 3600
    live = DirCache(data, auths).load(late)
    assert live.consensus is not None and live.netdir(late) is not None
    assert live.next_requests(late)[0].kind == "consensus"
    # For real: the client starts from it and replaces it promptly.
    config = dataclasses.replace(torrc_config(info, tmp_path / "client"), data_directory=data)

    async def run() -> tuple[float, float, str]:
        async with TorClient(config, bootstrap_timeout=90) as tor:
            t0 = time.monotonic()
            state = tor._dirmgr.state
            assert state is not None
            while state.consensus is None or state.consensus.lifetime[2] <= time.time():
                assert time.monotonic() - t0 < 45, "the expired consensus was not replaced"
                await asyncio.sleep(0.2)
            replaced = time.monotonic() - t0
            ip = await fetch_ip(tor)
            return replaced, state.consensus.lifetime[0], ip

    replaced, new_va, ip = asyncio.run(run())
    print(
        f"expired cached consensus (valid-until {time.time() - vu:.0f}s ago) replaced in {replaced:.1f}s"
    )
    assert new_va > va
    assert ip in info["targets"]["exit_addresses"]
    assert (data / CONSENSUS_FILE).read_bytes() != raw_before  # the cache was rewritten


# --------------------------------------------------------------------------- DataDirectory


def _run_to_exit(client: Any, timeout: float = 30.0) -> int:
    try:
        return client.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        client.stop()
        raise AssertionError(f"tor-client did not stop:\n{client.log_tail()}") from None


def _one_clear_error(log: str, needle: str) -> None:
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if "[err]" in line]
    assert len(errors) == 1 and needle in errors[0], log
    assert "Opened Socks listener" not in log, "it listened before checking the DataDirectory"


@pytest.mark.options("DataDirectory")
def test_data_directory_is_a_file(testnet: TestNetwork, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("I am a file\n")
    client = start_daemon(testnet.info, tmp_path / "d", wait=False, data_dir=blocker)
    assert _run_to_exit(client) == 1
    _one_clear_error(
        client.log_text(), f"cannot use {blocker} as the DataDirectory: not a directory"
    )


def _in_mount_ns(script: str, path: Path) -> list[str]:
    """A prefix running the command in a private mount namespace after `script` (sh, with
    $0 = path): mounts made there vanish with the process and nobody else sees them."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(path)]


def test_data_directory_read_only(testnet: TestNetwork, tmp_path: Path) -> None:
    data = tmp_path / "ro"
    data.mkdir(mode=0o700)
    wrap = _in_mount_ns(
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', data
    )
    client = start_daemon(testnet.info, tmp_path / "d", wait=False, data_dir=data, wrap=wrap)
    rc = _run_to_exit(client)
    log = client.log_text()
    assert rc == 1, log
    _one_clear_error(log, f"cannot use {data} as the DataDirectory: cannot create files in it")
    assert "Read-only file system" in log


def test_data_directory_full_disk(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    data = tmp_path / "full"
    data.mkdir(mode=0o700)
    # A 64 KiB tmpfs, filled up: creating (empty) files works, writing anything fails.
    wrap = _in_mount_ns(
        'mount -t tmpfs -o size=64k,mode=0700 tmpfs "$0"'
        ' && (dd if=/dev/zero of="$0/filler" bs=4k 2>/dev/null; true) && exec "$@"',
        data,
    )
    client = start_daemon(info, tmp_path / "d", data_dir=data, wrap=wrap, timeout=90)
    try:
        out = curl_via(client, info["targets"]["files"]["1MiB"]["urls"]["http_host"])
        assert out.returncode == 0 and len(out.stdout) == 1 << 20, out.stderr
        client.wait_for_log(r"No space left on device", timeout=20)
        # Inside its mount namespace: nothing half-written left behind.
        inside = Path(f"/proc/{client.pid}/root") / str(data).lstrip("/")
        names = sorted(os.listdir(inside)) if client.proc.poll() is None else []
        print("full DataDirectory holds:", names)
        assert not [n for n in names if n.endswith(".tmp")], names
    finally:
        rc = client.stop()
    log = client.log_text()
    assert rc == 0, log
    assert "Traceback" not in log and "[err]" not in log, log
    warnings = [line for line in log.splitlines() if "No space left on device" in line]
    assert warnings and all("[warn]" in line for line in warnings), warnings
    print("first warning:", warnings[0])
