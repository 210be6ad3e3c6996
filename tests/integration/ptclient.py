"""Run the real ``tor-client`` daemon (the console script) against the private network.

    client = start_tor_client(net.info, tmp_path / "tc")    # waits for "Bootstrapped 100%"
    body = client.curl("http://target.test/ip")              # curl --socks5-hostname
    client.stop()                                            # SIGTERM, then SIGKILL

Fixtures (import them into a test module: ``from ptclient import tor_daemon, ...``):

    tor_daemon          (session) one shared daemon, started once per session however many
                        modules import it; stopped at session end
    tor_daemon_factory  (function) start more daemons, e.g. with ``extra_options=``; each is
                        stopped when the test ends, pass or fail

Every daemon started here is also stopped at interpreter exit and, through ``setpriv
--pdeathsig``, if the pytest process dies: none outlives the run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from puretor.testnet import netns
from puretor.testnet.ctor_client import CurlError
from puretor.testnet.targets import read_source_log

__all__ = [
    "BOOTSTRAP_PHASES",
    "CurlError",
    "PtClient",
    "PtClientError",
    "direct_sources",
    "socks5_request",
    "start_tor_client",
    "tor_daemon",
    "tor_daemon_factory",
    "wait_for_exits",
]

# C tor's bootstrap phases (control_bootstrap.c boot_to_str_tab): percent -> (tag, summary).
BOOTSTRAP_PHASES: dict[int, tuple[str, str]] = {
    0: ("starting", "Starting"),
    1: ("conn_pt", "Connecting to pluggable transport"),
    2: ("conn_done_pt", "Connected to pluggable transport"),
    3: ("conn_proxy", "Connecting to proxy"),
    4: ("conn_done_proxy", "Connected to proxy"),
    5: ("conn", "Connecting to a relay"),
    10: ("conn_done", "Connected to a relay"),
    14: ("handshake", "Handshaking with a relay"),
    15: ("handshake_done", "Handshake with a relay done"),
    20: ("onehop_create", "Establishing an encrypted directory connection"),
    25: ("requesting_status", "Asking for networkstatus consensus"),
    30: ("loading_status", "Loading networkstatus consensus"),
    40: ("loading_keys", "Loading authority key certs"),
    45: ("requesting_descriptors", "Asking for relay descriptors"),
    50: ("loading_descriptors", "Loading relay descriptors"),
    75: ("enough_dirinfo", "Loaded enough directory info to build circuits"),
    80: ("ap_conn", "Connecting to a relay to build circuits"),
    85: ("ap_conn_done", "Connected to a relay to build circuits"),
    89: ("ap_handshake", "Finishing handshake with a relay to build circuits"),
    90: ("ap_handshake_done", "Handshake finished with a relay to build circuits"),
    95: ("circuit_create", "Establishing a Tor circuit"),
    100: ("done", "Done"),
}
BOOTSTRAP_LINE = re.compile(r"\[notice\] Bootstrapped (\d+)% \(([a-z_]+)\): (.*?)\s*$", re.M)
_LISTENER = re.compile(r"Opened Socks listener connection \(ready\) on 127\.0\.0\.1:(\d+)")

# Options of the network's C tor client torrc that a client has no use for and puretor
# refuses (it names unsupported options instead of ignoring them), and those we set ourselves.
_DROPPED = frozenset(
    s.lower()
    for s in (
        "Nickname",
        "PidFile",
        "ShutdownWaitLength",
        "DataDirectory",
        "SocksPort",
        "Log",
        "SafeLogging",
    )
)

_live: list[PtClient] = []
_live_lock = threading.Lock()


class PtClientError(RuntimeError):
    pass


def tor_client_binary() -> str:
    """The installed ``tor-client`` console script (next to this Python, else on PATH)."""
    here = Path(sys.executable).parent / "tor-client"
    if here.exists():
        return str(here)
    found = shutil.which("tor-client")
    if found is None:
        raise PtClientError("the tor-client console script is not installed (pip install -e .)")
    return found


class PtClient:
    """One ``tor-client`` process: its torrc, log, SOCKS port and lifecycle."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        workdir: Path,
        torrc: Path,
        log: Path,
        netns_name: str | None,
        socks_port: int,
        ca_cert: str | None,
    ) -> None:
        self.proc = proc
        self.workdir = workdir
        self.torrc = torrc
        self.log = log
        self.netns = netns_name
        self.socks_port = socks_port  # known once the listener is open (at once unless auto)
        self.ca_cert = ca_cert
        self.started = time.monotonic()
        self.bootstrap_seconds: float | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def socks_address(self) -> str:
        return f"127.0.0.1:{self.socks_port}"

    def is_running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout: float = 30.0) -> re.Match[str]:
        """Wait until regex `pattern` matches the log after character offset `since`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(), since)
            if m:
                return m
            if time.monotonic() > deadline:
                raise PtClientError(
                    f"{pattern!r} not in tor-client's log after {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def wait_bootstrapped(self, timeout: float = 120.0) -> float:
        """Wait for "Bootstrapped 100%" and the SOCKS port; returns seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if not self.socks_port and (m := _LISTENER.search(text)):
                self.socks_port = int(m.group(1))
            if "Bootstrapped 100%" in text and self.socks_port:
                self.bootstrap_seconds = time.monotonic() - self.started
                return self.bootstrap_seconds
            if self.proc.poll() is not None:
                raise PtClientError(
                    f"tor-client exited with status {self.proc.returncode} before bootstrapping:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise PtClientError(
                    f"tor-client not bootstrapped after {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    # -- signals -------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"ptclient: tor-client (pid {self.pid}) ignored SIGTERM for {timeout:.0f}s; "
                    "killing it",
                    file=sys.stderr,
                )
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(10.0)
        with _live_lock, contextlib.suppress(ValueError):
            _live.remove(self)
        return self.proc.returncode

    def __enter__(self) -> PtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- using it --------------------------------------------------------------------------

    def proxy_url(
        self, scheme: str = "socks5h", user: str | None = None, password: str | None = None
    ) -> str:
        auth = f"{user}:{password or ''}@" if user is not None else ""
        return f"{scheme}://{auth}{self.socks_address}"

    def curl_argv(
        self,
        url: str,
        *extra: str,
        user: str | None = None,
        password: str = "x",
        cacert: str | None = None,
        max_time: float = 120,
    ) -> list[str]:
        """curl through this daemon, hostnames resolved by the exit (socks5h / --socks5-hostname).

        With `user`, curl authenticates with RFC 1929 username/password: an isolation key.
        HTTPS URLs get the network's CA unless `cacert` says otherwise.
        """
        argv = ["curl", "--silent", "--show-error", "--fail", "--max-time", f"{max_time:g}"]
        if user is None:
            argv += ["--socks5-hostname", self.socks_address]
        else:
            argv += ["--proxy", self.proxy_url("socks5h", user, password)]
        if cacert is None and url.startswith("https:"):
            cacert = self.ca_cert
        if cacert:
            argv += ["--cacert", cacert]
        return netns.wrap(self.netns, [*argv, *extra, url])

    def curl(
        self,
        url: str,
        *extra: str,
        user: str | None = None,
        password: str = "x",
        cacert: str | None = None,
        timeout: float = 150.0,
    ) -> bytes:
        """Run curl through this daemon and return its stdout; raises CurlError on failure."""
        argv = self.curl_argv(
            url, *extra, user=user, password=password, cacert=cacert, max_time=timeout - 10
        )
        proc = subprocess.run(argv, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip()
            raise CurlError(
                url, proc.returncode, f"{stderr}\n--- tor-client log ---\n{self.log_tail(15)}"
            )
        return proc.stdout

    def fetch_ip(self, url: str, *, user: str | None = None) -> str:
        return self.curl(url, user=user).decode().strip()


def _option_lines(extra: Mapping[str, Any] | Iterable[Any]) -> list[str]:
    """torrc lines from {"Option": value | [values]} or ["Option value" | ("Option", value)]."""
    items: Iterable[Any] = extra.items() if isinstance(extra, Mapping) else extra
    lines: list[str] = []
    for item in items:
        if isinstance(item, str):
            lines.append(item)
            continue
        key, value = item
        values = value if isinstance(value, list | tuple) else [value]
        lines += [f"{key} {v}" for v in values]
    return lines


def client_torrc_lines(info: Mapping[str, Any]) -> list[str]:
    """The network's client torrc minus what `_DROPPED` names (comments kept out too)."""
    out = []
    for line in Path(info["client_torrc"]).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.split(None, 1)[0].lower() in _DROPPED:
            continue
        out.append(stripped)
    return out


_exits_ready: set[str] = set()


def wait_for_exits(info: Mapping[str, Any], timeout: float = 180.0) -> float:
    """Wait until every exit's C tor says "Bootstrapped 100%"; returns the seconds waited.

    The network counts as ready once a consensus lists every relay, but an exit that has not
    bootstrapped itself yet ends every stream with END MISC (seen right after start-up) - C tor
    clients paper over that by retrying elsewhere, so a fresh network still "works" for them.
    """
    key = str(info["workdir"])
    if key in _exits_ready:
        return 0.0
    exits = {e["nickname"] for e in info["exits"]}
    logs = {r["nickname"]: Path(r["log"]) for r in info["relays"] if r["nickname"] in exits}
    t0 = time.monotonic()
    while True:
        pending = [
            n
            for n, log in logs.items()
            if not log.exists() or "Bootstrapped 100%" not in log.read_text(errors="replace")
        ]
        if not pending:
            _exits_ready.add(key)
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            tails = "\n".join(
                f"--- {n}:\n" + "\n".join(logs[n].read_text(errors="replace").splitlines()[-10:])
                for n in pending
            )
            raise PtClientError(f"exits {pending} not bootstrapped after {timeout:.0f}s\n{tails}")
        time.sleep(0.2)


def start_tor_client(
    info: Mapping[str, Any],
    workdir: Path | str,
    *,
    extra_options: Mapping[str, Any] | Sequence[Any] = (),
    socks_port: int | None = None,
    wait: bool = True,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    log_severity: str | None = None,
) -> PtClient:
    """Write a torrc for the network in `info` and run ``tor-client -f torrc``.

    `socks_port` None means ``SocksPort auto`` (read back from the log: no race for a free
    port). `extra_options` are appended to the torrc. First waits, once per network, until
    the exits have bootstrapped (`wait_for_exits`). With `wait`, returns once the log says
    "Bootstrapped 100%"; on timeout or early exit the error carries the log's tail.
    `log_severity` defaults to info (quiet unless something fails), or $PTCLIENT_LOG_SEVERITY.
    """
    severity = log_severity or os.environ.get("PTCLIENT_LOG_SEVERITY", "info")
    wait_for_exits(info)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    torrc = workdir / "torrc"
    lines = [
        "# written by tests/integration/ptclient.py",
        *client_torrc_lines(info),
        f"DataDirectory {data_dir}",
        f"SocksPort 127.0.0.1:{socks_port if socks_port else 'auto'}",
        f"Log {severity} stdout",
        "SafeLogging 0",
        *_option_lines(extra_options),
    ]
    torrc.write_text("\n".join(lines) + "\n")
    log = workdir / "tor-client.log"
    argv = [tor_client_binary(), "-f", str(torrc)]
    if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
        # The kernel SIGTERMs the daemon if the pytest process dies first. (The parent-death
        # signal follows the forking *thread*: only the main thread lives as long as we do.)
        argv = ["setpriv", "--pdeathsig", "TERM", *argv]
    child_env = dict(os.environ)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})
    with log.open("ab") as out:
        proc = subprocess.Popen(
            netns.wrap(info["netns"]["name"], argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,  # a terminal's Ctrl-C goes to pytest, which stops us
            close_fds=True,
        )
    client = PtClient(
        proc,
        workdir,
        torrc,
        log,
        info["netns"]["name"],
        socks_port or 0,
        info["targets"]["ca_cert"],
    )
    with _live_lock:
        _live.append(client)
    if wait:
        try:
            client.wait_bootstrapped(timeout)
        except BaseException:
            client.stop()
            raise
    return client


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        clients = list(_live)
    for c in clients:
        c.stop(timeout=5.0)


# --- the target's source log: proof that nothing connected directly ------------------------


def direct_sources(info: Mapping[str, Any]) -> list[str]:
    """Source-log lines from anything but an exit or an onion host (e.g. 127.0.0.1)."""
    allowed = set(info["targets"]["exit_addresses"])
    allowed |= {h["address"] for h in info.get("onion_hosts", ())}
    return [
        f"{r.time:.3f} {r.listener} {r.ip}:{r.port}"
        for r in read_source_log(info["targets"]["source_log"])
        if r.ip not in allowed
    ]


# --- a raw SOCKS5 client, to read exact reply codes --------------------------------------


async def socks5_request(
    port: int,
    host: str,
    dest_port: int,
    *,
    command: int = 1,
    auth: tuple[bytes, bytes] | None = None,
    timeout: float = 60.0,
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """SOCKS5 handshake + request; returns (the 10+ byte reply, reader, writer).

    `host` may be an IPv4/IPv6 literal (sent as ATYP 1/4) or a hostname (ATYP 3).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if auth is None:
            writer.write(b"\x05\x01\x00")
            assert await asyncio.wait_for(reader.readexactly(2), timeout) == b"\x05\x00"
        else:
            user, password = auth
            writer.write(b"\x05\x01\x02")
            assert await asyncio.wait_for(reader.readexactly(2), timeout) == b"\x05\x02"
            writer.write(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
            assert await asyncio.wait_for(reader.readexactly(2), timeout) == b"\x01\x00"
        try:
            ip = ipaddress.ip_address(host)
            addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        except ValueError:
            raw = host.encode()
            addr = bytes([3, len(raw)]) + raw
        writer.write(bytes([5, command, 0]) + addr + struct.pack("!H", dest_port))
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        atyp = head[3]
        if atyp == 1:
            rest = await reader.readexactly(6)
        elif atyp == 4:
            rest = await reader.readexactly(18)
        else:
            n = await reader.readexactly(1)
            rest = n + await reader.readexactly(n[0] + 2)
        return head + rest, reader, writer
    except BaseException:
        writer.close()
        raise


# --- fixtures -----------------------------------------------------------------------------

_shared: dict[str, PtClient] = {}
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def tor_daemon(testnet: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PtClient]:
    """One tor-client for the whole session, shared by every module that imports this.

    (A session fixture imported into several modules is one fixture per module to pytest,
    hence the module-level cache: the first start wins, and the first teardown stops it.)
    """
    key = testnet.info["workdir"]
    with _shared_lock:
        client = _shared.get(key)
        if client is None or not client.is_running():
            client = start_tor_client(testnet.info, tmp_path_factory.mktemp("tor-client-shared"))
            _shared[key] = client
    try:
        yield client
    finally:
        with _shared_lock:
            _shared.pop(key, None)
        client.stop()


@pytest.fixture
def tor_daemon_factory(
    testnet: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., PtClient]]:
    """``start(extra_options=..., socks_port=..., wait=...)`` -> a new daemon, stopped after
    the test however it ends."""
    started: list[PtClient] = []

    def start(**kwargs: Any) -> PtClient:
        client = start_tor_client(testnet.info, tmp_path_factory.mktemp("tor-client"), **kwargs)
        started.append(client)
        return client

    try:
        yield start
    finally:
        for client in started:
            client.stop()
