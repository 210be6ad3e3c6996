"""The two clients under test, started with the same torrc text against the same network.

Both get exactly these options (nothing implementation-specific):

    TestingTorNetwork 1
    DataDirectory <own dir>
    Log notice file <own dir>/notice.log
    SafeLogging 0
    UseDefaultFallbackDirs 0
    DirAuthority ... (the network's three authorities)
    SocksPort 127.0.0.1:auto ExtendedErrors     (IsolateSOCKSAuth, IsolateClientAddr: defaults)
    ClientOnionAuthDir <the network's client-auth key dir>

puretor runs as ``python -m puretor.cli -f torrc`` (what the ``tor-client`` script runs), C tor as
``tor --defaults-torrc <empty> -f torrc``. Both inherit the benchmark's raised RLIMIT_NOFILE.

Start-up is timed from just before the process is spawned:

    log_ready   "Opened Socks listener connection (ready) on 127.0.0.1:PORT" seen in the log
    log_100     "Bootstrapped 100%" seen in the log (polled every 10 ms: C tor's own log
                timestamps have 1 s granularity, so we time what we observe, for both)
    first_fetch the first successful GET of a small page through the SOCKS port (attempts
                start as soon as the port is known; each waits inside the client until it can
                build a circuit, or fails and is retried 50 ms later)
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puretor.bench import procstat
from puretor.bench.socks import Credentials, fetch
from puretor.testnet import procs
from puretor.testnet.info import NetworkInfo
from puretor.testnet.network import find_binary, tail
from puretor.testnet.procs import ProcRecord

PURETOR = "puretor"
CTOR = "ctor"
KINDS = (PURETOR, CTOR)
LABELS = {PURETOR: "puretor", CTOR: "C tor"}

_LISTENER = re.compile(rb"Opened Socks listener connection \(ready\) on 127\.0\.0\.1:(\d+)")
_BOOTSTRAPPED = b"Bootstrapped 100%"


class ClientError(RuntimeError):
    pass


def torrc_text(info: NetworkInfo, data_dir: Path, *, debug_log: bool = False) -> str:
    """The one torrc both implementations get (see the module docstring). `debug_log` adds an
    info-level log file to both (diagnosis only: it costs both clients CPU)."""
    lines = [
        "# puretor.bench: identical for puretor and C tor",
        "TestingTorNetwork 1",
        f"DataDirectory {data_dir}",
        f"Log notice file {data_dir / 'notice.log'}",
        "SafeLogging 0",
        "UseDefaultFallbackDirs 0",
        *info["dir_authority_lines"],
        "SocksPort 127.0.0.1:auto ExtendedErrors",
        f"ClientOnionAuthDir {info['onion']['client_auth']['client_onion_auth_dir']}",
    ]
    if debug_log:
        lines.append(f"Log info file {data_dir / 'info.log'}")
    return "\n".join(lines) + "\n"


@dataclass
class BootTimes:
    log_ready: float | None = None
    log_100: float | None = None
    first_fetch: float | None = None
    fetch_attempts: int = 0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "log_ready": self.log_ready,
            "log_100": self.log_100,
            "first_fetch": self.first_fetch,
            "fetch_attempts": self.fetch_attempts,
            "error": self.error,
        }


@dataclass
class BenchClient:
    """One Tor client process (puretor or C tor) in its own work directory."""

    kind: str
    workdir: Path
    info: NetworkInfo
    cprofile_out: Path | None = None  # puretor only: run under cProfile, stats written here
    debug_log: bool = False
    record: ProcRecord | None = None
    socks_port: int = 0
    starts: int = 0
    boots: list[BootTimes] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.data_dir / "notice.log"

    @property
    def pid(self) -> int:
        if self.record is None:
            raise ClientError(f"{self.label} is not running")
        return self.record.pid

    @property
    def proxy(self) -> tuple[str, int]:
        return ("127.0.0.1", self.socks_port)

    def prepare(self, *, fresh: bool) -> None:
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        (self.workdir / "torrc").write_text(
            torrc_text(self.info, self.data_dir, debug_log=self.debug_log)
        )
        (self.workdir / "torrc-defaults").write_text("")

    def argv(self) -> list[str]:
        torrc = str(self.workdir / "torrc")
        if self.kind == PURETOR:
            if self.cprofile_out is not None:
                out = self.cprofile_out.with_suffix(f".{self.starts}.prof")
                return [sys.executable, "-m", "puretor.bench.cpuprof", str(out), "-f", torrc]
            return [sys.executable, "-m", "puretor.cli", "-f", torrc]
        tor = find_binary("tor")
        if tor is None:
            raise ClientError("C tor (`tor`) not found; apt install tor")
        return [tor, "--defaults-torrc", str(self.workdir / "torrc-defaults"), "-f", torrc]

    async def start(self, boot_url: str, *, fresh: bool, timeout: float = 120.0) -> BootTimes:
        """Start the process and time it to "Bootstrapped 100%" and to a first fetch."""
        if self.record is not None:
            raise ClientError(f"{self.label} already running")
        self.prepare(fresh=fresh)
        log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.starts += 1
        boot = BootTimes()
        t0 = time.perf_counter()
        self.record = procs.spawn(
            f"bench-{self.kind}",
            self.argv(),
            log=self.workdir / f"stdout.{self.starts}.log",
            die_with_parent=True,
        )
        self.socks_port = 0
        fetch_task: asyncio.Task[None] | None = None
        deadline = t0 + timeout
        n = 0

        async def first_fetch() -> None:
            nonlocal n
            while True:
                n += 1
                creds = Credentials(f"boot-{self.starts}-{n}")
                res = await fetch(
                    self.proxy,
                    boot_url,
                    creds=creds,
                    expected_sha256=None,
                    timeout=max(1.0, deadline - time.perf_counter()),
                )
                if res.ok:
                    boot.first_fetch = res.start + (res.total or 0.0) - t0
                    return
                boot.error = res.error
                if time.perf_counter() > deadline:
                    return
                await asyncio.sleep(0.05)

        try:
            while True:
                text = self._log_since(log_offset)
                now = time.perf_counter() - t0
                if boot.log_ready is None and (m := _LISTENER.search(text)):
                    boot.log_ready = now
                    self.socks_port = int(m.group(1))
                    fetch_task = asyncio.ensure_future(first_fetch())
                if boot.log_100 is None and _BOOTSTRAPPED in text:
                    boot.log_100 = now
                if boot.log_100 is not None and fetch_task is not None and fetch_task.done():
                    break
                if not procs.is_alive(self.record):
                    raise ClientError(
                        f"{self.label} exited during start-up:\n{tail(self.record.log)}\n"
                        f"{tail(self.log)}"
                    )
                if time.perf_counter() > deadline:
                    raise ClientError(
                        f"{self.label} not bootstrapped after {timeout:.0f}s "
                        f"(log_100={boot.log_100}, fetch error: {boot.error}):\n{tail(self.log)}"
                    )
                await asyncio.sleep(0.01)
        except BaseException:
            if fetch_task is not None:
                fetch_task.cancel()
            self.stop()
            raise
        boot.fetch_attempts = n
        if boot.first_fetch is not None:
            boot.error = ""
        else:
            self.stop()
            raise ClientError(f"{self.label}: no successful fetch: {boot.error}\n{tail(self.log)}")
        self.boots.append(boot)
        return boot

    def _log_since(self, offset: int) -> bytes:
        try:
            with self.log.open("rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def cpu(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        return procstat.memory_kib(self.pid)

    def stop(self) -> None:
        if self.record is not None:
            procs.stop([self.record], timeout=20.0)
            self.record = None

    def is_running(self) -> bool:
        return self.record is not None and procs.is_alive(self.record)


def describe(kinds: Sequence[str]) -> str:
    return " / ".join(LABELS[k] for k in kinds)
