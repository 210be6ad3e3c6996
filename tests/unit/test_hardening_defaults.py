"""Hardening: security defaults and clean failures (no network needed).

SOCKS listens on loopback unless told otherwise; SafeLogging is on; an unusable
DataDirectory stops ``tor-client`` with one line (no traceback, before listening); a full
disk leaves no half-written guard state and files stay 0600; SIGUSR1 statistics; secrets
(client-auth keys) stay out of error messages.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import puretor.dir.cache as cache_mod
from puretor.aio.channel import ChannelManager
from puretor.aio.dirmgr import DirManager
from puretor.app.daemon import _statistics, run_daemon
from puretor.app.socks import ListenerPolicy, SocksServerStats
from puretor.config import DEFAULT_SOCKS_PORT, SocksPortConfig, TorConfig, load_config
from puretor.dir.cache import DirCache
from puretor.errors import ConfigError, DirectoryError
from puretor.hs.clientauth import load_client_auth_dir, parse_auth_private
from puretor.path.guards import GuardManager

KEY = "3AIY2UN2WQLD4PQSAH3F4LNU2BFMWIJRPEYPMX6ZJILWHJZVHRGA"
ONION = "v2xeuqyw6iosxwaaa5zahwy22qvfpsisv4s2bblqme6rp2i2tgq4npyd"


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    """run_daemon points the "puretor" logger at (captured) stdout: undo that afterwards."""
    root = logging.getLogger("puretor")
    saved = (list(root.handlers), root.propagate, root.level)
    yield
    root.handlers[:] = saved[0]
    root.propagate, root.level = saved[1], saved[2]


# --------------------------------------------------------------------------- defaults


def test_socks_listens_on_loopback_unless_configured(tmp_path: Path) -> None:
    assert TorConfig().socks_ports == (DEFAULT_SOCKS_PORT,)
    assert DEFAULT_SOCKS_PORT.address == "127.0.0.1" and DEFAULT_SOCKS_PORT.port == 9050
    for value in ("9999", "auto", "localhost:9999"):
        cfg = load_config(["--SocksPort", value, "--DataDirectory", str(tmp_path)])
        assert cfg.socks_ports[0].address == "127.0.0.1", value
        assert cfg.socks_ports[0].is_loopback


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("0.0.0.0", False)]
    + [("::", False), ("198.18.0.1", False), ("192.168.1.1", False)],
)
def test_loopback_check(address: str, loopback: bool) -> None:
    assert SocksPortConfig(address, 9050).is_loopback is loopback


def test_safe_logging_is_on_by_default() -> None:
    assert TorConfig().safe_logging is True
    assert ListenerPolicy(listener_id=0).safe_logging is True
    cfg = load_config(["--SocksPort", "0"])
    assert cfg.safe_logging is True


# --------------------------------------------------------------------------- DataDirectory


def _one_line_error(out: str, needle: str) -> None:
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if "[err]" in line]
    assert len(errors) == 1 and needle in errors[0], out
    assert "Opened Socks listener" not in out


def test_data_directory_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("x")
    rc = run_daemon(["--DataDirectory", str(blocker), "--SocksPort", "auto"], version="t")
    out = capsys.readouterr()
    assert rc == 1
    _one_line_error(out.out + out.err, f"cannot use {blocker} as the DataDirectory")


def test_data_directory_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("x")
    rc = run_daemon(["--DataDirectory", str(blocker / "sub"), "--SocksPort", "auto"], version="t")
    out = capsys.readouterr()
    assert rc == 1
    _one_line_error(out.out + out.err, f"cannot use {blocker / 'sub'}")


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def create_temporary(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_mod, "_create_temporary", create_temporary)


def test_read_only_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # (Root ignores permission bits: simulate the read-only file system instead. The
    # integration test mounts a real read-only bind mount.)
    _read_only(monkeypatch)
    with pytest.raises(DirectoryError, match="cannot create files in it .Read-only file system"):
        DirCache(tmp_path, ()).ensure_dir(probe=True)
    DirCache(tmp_path, ()).ensure_dir()  # without the probe: no write attempted
    rc = run_daemon(["--DataDirectory", str(tmp_path), "--SocksPort", "auto"], version="t")
    out = capsys.readouterr()
    assert rc == 1
    _one_line_error(out.out + out.err, "Read-only file system")


def test_loose_data_directory_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    DirCache(data, ()).ensure_dir(probe=True)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert os.listdir(data) == []  # the probe file is gone


# --------------------------------------------------------------------------- guard state


def _dirmgr(tmp_path: Path) -> DirManager:
    mgr = DirManager(TorConfig(data_directory=tmp_path), ChannelManager())
    mgr.guards = GuardManager()
    return mgr


def test_guard_state_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = _dirmgr(tmp_path)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with caplog.at_level(logging.WARNING, logger="puretor"):
        mgr.save_guards()
    assert os.listdir(tmp_path) == []  # no half-written state.tmp left behind
    messages = [r.getMessage() for r in caplog.records]
    assert any("No space left on device" in m for m in messages), messages
    assert not any(r.exc_info for r in caplog.records)


def test_guard_state_is_0600_even_over_a_loose_leftover(tmp_path: Path) -> None:
    leftover = tmp_path / "state.tmp"
    leftover.write_text("{}")
    os.chmod(leftover, 0o644)
    mgr = _dirmgr(tmp_path)
    mgr.save_guards()
    state = tmp_path / "state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert not leftover.exists()
    json.loads(state.read_text())


# --------------------------------------------------------------------------- statistics


def test_sigusr1_statistics_line() -> None:
    class Tor:
        def stats(self) -> dict[str, int]:
            return {
                "streams_opened": 3,
                "open_circuits": 2,
                "circuits_built": 4,
                "conflux_sets_linked": 1,
                "channels_opened": 1,
                "queued_bytes": 1234,
                "queued_bytes_peak": 5678,
                "oom_tunnels_closed": 0,
            }

    s1, s2 = SocksServerStats(), SocksServerStats()
    s1.active, s1.total, s2.active, s2.total, s2.refused = 2, 5, 1, 1, 7

    class Listener:
        def __init__(self, stats: SocksServerStats) -> None:
            self.stats = stats

    async def main() -> str:
        return _statistics(Tor(), [Listener(s1), Listener(s2)])

    line = asyncio.run(main())
    fields = dict(kv.split("=") for kv in line.removeprefix("Statistics: ").split())
    assert fields["socks_active"] == "3" and fields["socks_total"] == "6"
    assert fields["socks_refused"] == "7" and fields["open_circuits"] == "2"
    assert fields["conflux_sets_linked"] == "1"
    assert fields["queued_bytes"] == "1234" and fields["queued_bytes_peak"] == "5678"
    assert int(fields["asyncio_tasks"]) >= 1
    assert int(fields["open_fds"]) > 2 and int(fields["rss_kib"]) > 1000


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "line",
    [
        f"{ONION}:{KEY}:descriptor:x25519",
        f"{KEY}:descriptor:x25519:{ONION}",
        f"{ONION}:descriptor:{KEY}:x25519",
        f"{ONION}:descriptor:x25519:{KEY}X",
        f"{ONION}:descriptor:x25519:{KEY[:-1]}1",
        f"{ONION}:descriptor:x25519:{KEY}:extra",
        f"{ONION}:descriptor:x25519:{KEY}\n{ONION}:descriptor:x25519:{KEY}",
        f"{ONION}x:descriptor:x25519:{KEY}",
    ],
)
def test_client_auth_errors_never_show_the_key(line: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_auth_private(line, source="svc.auth_private")
    message = str(err.value)
    assert "svc.auth_private" in message
    for fragment in (KEY, KEY.lower(), KEY[:12], KEY[-12:]):
        assert fragment not in message, message
    (tmp_path / "svc.auth_private").write_text(line + "\n")
    with pytest.raises(ConfigError) as err2:
        load_client_auth_dir(tmp_path)
    assert KEY[:12] not in str(err2.value)


def test_client_auth_good_line_still_parses() -> None:
    identity, key = parse_auth_private(f"{ONION}:descriptor:x25519:{KEY}")
    assert len(identity) == 32 and len(key) == 32


# --------------------------------------------------------------------------- SafeLogging


class _FailingTor:
    """A TorClient stand-in whose every stream fails with an error naming the target."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def create_connection(self, factory: Any, host: str, port: int, **kw: Any) -> Any:
        raise self.error


async def _socks_request(port: int, host: str, user: bytes, password: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x05\x01\x02")
        await reader.readexactly(2)
        writer.write(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        await reader.readexactly(2)
        h = host.encode()
        writer.write(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + b"\x00\x50")
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("kind", ["onion", "refused", "other", "unexpected"])
def test_socks_errors_are_logged_without_destination_or_credentials(
    kind: str, safe: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from puretor.app.socks import start_socks_listener
    from puretor.errors import OnionError, StreamRefused, TorError

    host = "Secret-Destination.example" if kind != "onion" else f"{ONION}.onion"
    user, password = b"isolation-user-x1", b"isolation-pass-y2"
    error: Exception = {
        "onion": OnionError(f"invalid onion address {host.lower()!r}: bad", socks_code=0xF6),
        "refused": StreamRefused(f"stream ended: {host.lower()}:80 (CONNECTREFUSED)", 3),
        "other": TorError(f"circuit for {host.lower()} with {user.decode()} failed"),
        "unexpected": RuntimeError(f"bug with {host.lower()} and {password.decode()}"),
    }[kind]

    async def main() -> bytes:
        policy = ListenerPolicy(listener_id=0, safe_logging=safe)
        server = await start_socks_listener(_FailingTor(error), "127.0.0.1", 0, policy)  # type: ignore[arg-type]
        try:
            port = server.address[1]
            return await _socks_request(port, host, user, password)
        finally:
            server.close()

    with caplog.at_level(logging.DEBUG, logger="puretor"):
        reply = asyncio.run(main())
    assert reply[:2] != b"\x05\x00"  # an error reply
    text = "\n".join(r.getMessage() for r in caplog.records).lower()
    assert text, "nothing was logged"
    fragments = [host.lower(), ONION[:16], user.decode(), password.decode()]
    if safe:
        assert not [f for f in fragments if f in text], text
        assert "[scrubbed]" in text
    else:
        assert host.lower()[:16] in text or ONION[:16] in text
