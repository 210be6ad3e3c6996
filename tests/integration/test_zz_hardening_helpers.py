"""Helpers for the hardening modules (``test_zz_hardening_*.py``); no tests here.

* `start_daemon` runs ``tor-client`` with a torrc we write entirely ourselves (no
  ``SafeLogging 0``, unlike `ptclient.start_tor_client`), optionally under an *audit hook*:
  a Python audit hook (PEP 578) installed before puretor is imported writes every
  ``socket.connect``, every name lookup (``socket.getaddrinfo`` & co.), every program start and
  every ``puretor.channel.connect`` event to a JSON-lines file. `audit_problems` then checks
  that each connect went to a relay's ORPort listed in network.json and nothing was resolved.
* `AUDIT` records the ``puretor.channel.connect`` events of *this* process (the pytest
  process): installed when this module is imported, i.e. at collection, it sees every
  in-process puretor channel of the session, and notes whether the TorClient making it had
  that target as a configured directory source. `test_zz_hardening_zz_session.py` checks it
  last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ptclient
from ptclient import PtClient, client_torrc_lines

from puretor.testnet import netns

STATS = re.compile(r"\[notice\] Statistics: (.*)$", re.M)
_LISTENER = re.compile(r"Opened Socks listener connection \(ready\) on ([0-9a-f.:]+):(\d+)")
# Options of the network's client torrc we leave out: SafeLogging (we want the default),
# and what the daemon refuses or we set ourselves.
_OWN = {"safelogging", "socksport", "log", "datadirectory", "nickname", "pidfile"}
_OWN |= {"shutdownwaitlength"}

_NAME_EVENTS = (
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
)
_PROGRAM_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn")

# The hook for a daemon: runs before puretor is imported, then hands over to tor-client.
_AUDIT_MAIN = r"""
import json, sys
_log = open(sys.argv[1], "a", buffering=1)
_NAMES = __NAMES__
_PROGRAMS = __PROGRAMS__
def _hook(event, args):
    if event == "socket.connect":
        addr = args[1]
        _log.write(json.dumps(["connect", list(addr) if isinstance(addr, tuple) else str(addr)]) + "\n")
    elif event == "puretor.channel.connect":
        _log.write(json.dumps(["channel", list(args)]) + "\n")
    elif event in _NAMES:
        _log.write(json.dumps(["resolve", event, repr(args)[:200]]) + "\n")
    elif event in _PROGRAMS:
        _log.write(json.dumps(["program", event, repr(args)[:200]]) + "\n")
sys.addaudithook(_hook)
from puretor.cli import main
sys.exit(main(sys.argv[2:]))
""".replace("__NAMES__", repr(_NAME_EVENTS)).replace("__PROGRAMS__", repr(_PROGRAM_EVENTS))


# --------------------------------------------------------------------------- in-process audit


class _ProcessAudit:
    """Every puretor channel connect of the pytest process, with what vouched for it."""

    def __init__(self) -> None:
        # (address, port, identity hex, test, configured): `configured` is True when the
        # TorClient that made it has that address, port and identity as a configured
        # DirAuthority/FallbackDir (its allow-check vouched for it as such).
        self.channels: list[tuple[str, int, str, str, bool]] = []
        self.allowed_extra: set[tuple[str, int]] = set()  # deliberate non-relay targets
        self.installed_at = time.time()
        self._lock = threading.Lock()

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "puretor.channel.connect":
            return
        address, port, ident = str(args[0]), int(args[1]), str(args[2])
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        configured = _configured_source(sys._getframe(1), address, port, ident)
        with self._lock:
            self.channels.append((address, port, ident, test, configured))


def _configured_source(frame: Any, address: str, port: int, ident: str) -> bool:
    """Whether the ChannelManager connecting (``self`` of the ``_open`` frame) belongs to a
    TorClient configured with this directory source."""
    while frame is not None and frame.f_code.co_name != "_open":
        frame = frame.f_back
    mgr = frame.f_locals.get("self") if frame is not None else None
    client = getattr(getattr(mgr, "allow", None), "__self__", None)
    dirmgr = getattr(client, "_dirmgr", None)
    if dirmgr is None:
        return False
    sources = [*dirmgr.authorities, *dirmgr.fallbacks]
    return any(
        s.rsa_id.hex() == ident and (address, port) in ((s.address, s.or_port), s.ipv6)
        for s in sources
    )


AUDIT = _ProcessAudit()
sys.addaudithook(AUDIT.hook)


# --------------------------------------------------------------------------- relays


def relay_orports(info: Mapping[str, Any]) -> dict[tuple[str, int], str]:
    """{(address, ORPort): fingerprint (lower-case hex)} of every relay and authority, their
    IPv6 ORPorts included."""
    out: dict[tuple[str, int], str] = {}
    for node in info["relays"]:
        if node.get("orport"):
            out[(node["address"], int(node["orport"]))] = node["fingerprint"].lower()
        if node.get("ipv6_orport"):
            out[(node["ipv6_address"], int(node["ipv6_orport"]))] = node["fingerprint"].lower()
    return out


def audit_problems(
    events: Iterable[Sequence[Any]],
    info: Mapping[str, Any],
    *,
    allowed: Iterable[tuple[str, int]] = (),
) -> list[str]:
    """What in an audit log was not a connect to a relay's ORPort (or an `allowed` one)."""
    relays = relay_orports(info)
    extra = set(allowed)
    problems = []
    for ev in events:
        kind = ev[0]
        if kind == "connect":
            addr = ev[1]
            key = (addr[0], int(addr[1])) if isinstance(addr, list) and len(addr) >= 2 else None
            if key is None or (key not in relays and key not in extra):
                problems.append(f"connect to {addr}")
        elif kind == "channel":
            address, port, ident = ev[1][0], int(ev[1][1]), ev[1][2]
            if relays.get((address, port)) != ident and (address, port) not in extra:
                problems.append(f"channel to {address}:{port} ${ident}")
        elif kind == "resolve":
            # asyncio resolves numeric hosts itself; anything reaching the resolver is a leak
            # unless it is a numeric address for our own listener.
            if not re.search(r"\('(127\.[0-9.]+|0\.0\.0\.0|::1?|)'", ev[2]):
                problems.append(f"{ev[1]}{ev[2]}")
        else:
            problems.append(" ".join(map(str, ev[1:])))
    return problems


def read_audit(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- daemons


def daemon_torrc(info: Mapping[str, Any], data_dir: Path, extra: Sequence[str]) -> list[str]:
    base = [
        line
        for line in client_torrc_lines(info)
        if line.split(None, 1)[0].lower() not in _OWN and not line.startswith("#")
    ]
    return [*base, f"DataDirectory {data_dir}", *extra]


def start_daemon(
    info: Mapping[str, Any],
    workdir: Path,
    extra: Sequence[str] = ("SocksPort 127.0.0.1:auto", "Log info stdout"),
    *,
    audit: bool = True,
    wait: bool = True,
    data_dir: Path | None = None,
    wrap: Sequence[str] = (),
    timeout: float = 120.0,
) -> PtClient:
    """``tor-client -f torrc`` with exactly `extra` after the network's lines (no SafeLogging
    line unless `extra` has one). `audit`: under the audit hook, log in ``workdir/audit.jsonl``.
    `wrap`: a command prefix (e.g. ``unshare -m ...``). Registered with ptclient, so it is
    stopped at exit whatever happens; the caller stops it (``.stop()``)."""
    ptclient.wait_for_exits(info)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir if data_dir is not None else workdir / "data"
    torrc = workdir / "torrc"
    torrc.write_text("\n".join(daemon_torrc(info, data_dir, extra)) + "\n")
    log = workdir / "tor-client.log"
    if audit:
        argv = [sys.executable, "-c", _AUDIT_MAIN, str(workdir / "audit.jsonl"), "-f", str(torrc)]
    else:
        argv = [ptclient.tor_client_binary(), "-f", str(torrc)]
    argv = [*wrap, *argv]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            netns.wrap(info["netns"]["name"], argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    client = PtClient(
        proc, workdir, torrc, log, info["netns"]["name"], 0, info["targets"]["ca_cert"]
    )
    with ptclient._live_lock:
        ptclient._live.append(client)
    if wait:
        try:
            wait_listening(client, timeout=30)
            client.wait_bootstrapped(timeout)
        except BaseException:
            client.stop()
            raise
    return client


def wait_listening(client: PtClient, timeout: float = 30.0) -> list[tuple[str, int]]:
    """Wait for the first "Opened Socks listener" line; sets ``client.socks_port`` to the
    first loopback one. Returns every (address, port) opened so far."""
    deadline = time.monotonic() + timeout
    while True:
        found = [(a, int(p)) for a, p in _LISTENER.findall(client.log_text())]
        if found:
            for address, port in found:
                if address.startswith("127.") and not client.socks_port:
                    client.socks_port = port
            return found
        if client.proc.poll() is not None:
            raise AssertionError(
                f"tor-client exited ({client.proc.returncode}):\n{client.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no SOCKS listener after {timeout:.0f}s:\n{client.log_tail()}")
        time.sleep(0.05)


def daemon_stats(client: PtClient, timeout: float = 10.0) -> dict[str, int]:
    """SIGUSR1 the daemon and parse the "Statistics:" line it logs."""
    since = len(client.log_text())
    client.send_signal(signal.SIGUSR1)
    m = client.wait_for_log(STATS.pattern, since=since, timeout=timeout)
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def curl_via(
    client: PtClient, url: str, *extra: str, timeout: float = 90
) -> subprocess.CompletedProcess[bytes]:
    """curl through the daemon (remote name resolution); the result, not raising."""
    argv = [
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        f"{timeout - 5:g}",
        "--socks5-hostname",
        client.socks_address,
        *extra,
        url,
    ]
    return subprocess.run(
        netns.wrap(client.netns, argv), capture_output=True, timeout=timeout, check=False
    )
