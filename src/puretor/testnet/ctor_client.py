"""A C tor client of the test network: the reference our own client is compared with.

client = start_ctor_client(net.info, tmp_path / "ctor")     # waits for "Bootstrapped 100%"
body = client.curl("http://target.test/ip")                 # curl --socks5-hostname
client.stop()
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from puretor.testnet import netns, procs, torrc
from puretor.testnet.info import NetworkInfo
from puretor.testnet.network import find_binary, tail, write_onion_auth_dir
from puretor.testnet.procs import ProcRecord

_LISTENER = re.compile(rb"Opened Socks listener connection \(ready\) on 127\.0\.0\.1:(\d+)")


class CTorClientError(RuntimeError):
    pass


class CurlError(CTorClientError):
    def __init__(self, url: str, returncode: int, stderr: str) -> None:
        super().__init__(f"curl {url} failed ({returncode}): {stderr}")
        self.url, self.returncode, self.stderr = url, returncode, stderr


def authorities_from_info(info: NetworkInfo) -> list[torrc.AuthorityId]:
    return [
        torrc.AuthorityId(
            a["nickname"],
            a["address"],
            a["orport"] or 0,
            a["dirport"] or 0,
            a["v3ident"],
            a["fingerprint"] or "",
            a.get("ipv6_address"),
        )
        for a in info["authorities"]
    ]


@dataclass
class CTorClient:
    record: ProcRecord
    data_dir: Path
    torrc: Path
    log: Path
    netns: str | None
    socks_port: int = 0  # known once the listener is open (immediately unless "auto")
    started: float = field(default_factory=time.monotonic)
    holder_pid: int | None = None  # a rootless network's namespace holder

    @property
    def socks_address(self) -> str:
        return f"127.0.0.1:{self.socks_port}"

    def _log_bytes(self) -> bytes:
        try:
            return self.log.read_bytes()
        except FileNotFoundError:
            return b""

    def wait_bootstrapped(self, timeout: float = 120.0) -> float:
        """Wait for "Bootstrapped 100%"; returns seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            text = self._log_bytes()
            if not self.socks_port and (m := _LISTENER.search(text)):
                self.socks_port = int(m.group(1))
            if b"Bootstrapped 100%" in text and self.socks_port:
                return time.monotonic() - self.started
            if not procs.is_alive(self.record):
                raise CTorClientError(
                    f"C tor client exited:\n{tail(self.log)}\n{tail(self.record.log)}"
                )
            if time.monotonic() > deadline:
                raise CTorClientError(
                    f"C tor client not bootstrapped after {timeout:.0f}s:\n{tail(self.log)}"
                )
            time.sleep(0.2)

    def curl_argv(self, url: str, *extra: str, cacert: str | None = None) -> list[str]:
        """curl through this client, resolving hostnames at the exit (--socks5-hostname)."""
        argv = [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "120",
            "--socks5-hostname",
            self.socks_address,
        ]
        if cacert:
            argv += ["--cacert", cacert]
        return netns.wrap(self.netns, [*argv, *extra, url], holder_pid=self.holder_pid)

    def curl(
        self, url: str, *extra: str, cacert: str | None = None, timeout: float = 150.0
    ) -> bytes:
        """Run curl through this client and return its stdout; raises with curl's stderr."""
        proc = subprocess.run(
            self.curl_argv(url, *extra, cacert=cacert), capture_output=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise CurlError(url, proc.returncode, proc.stderr.decode(errors="replace").strip())
        return proc.stdout

    def stop(self) -> None:
        procs.stop([self.record], timeout=10.0)

    def __enter__(self) -> CTorClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_ctor_client(
    info: NetworkInfo,
    workdir: Path | str,
    socks_port: int | None = None,
    *,
    client_auth: bool = True,
    extra_torrc: Sequence[str] = (),
    wait: bool = True,
    timeout: float = 120.0,
    wrap: Sequence[str] = (),
) -> CTorClient:
    """Start C tor as a client of the network described by `info` (default microdesc mode).

    `socks_port` None lets tor pick a free port (read back from its log). With `client_auth`
    the client holds the key of the client-auth onion service. `wrap`: a command prefix, e.g.
    ``setpriv --regid=GID --clear-groups --`` to run it censored (see censor.py).
    """
    tor = find_binary("tor")
    if tor is None:
        raise CTorClientError("`tor` not found")
    workdir = Path(workdir).resolve()
    data_dir = workdir / "data"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    auth_dir = write_onion_auth_dir(workdir / "onion-auth", info) if client_auth else None
    torrc_path = workdir / "torrc"
    torrc_path.write_text(
        torrc.client_torrc(
            data_dir,
            authorities_from_info(info),
            socks_port=socks_port or "auto",
            onion_auth_dir=auth_dir,
            extra=extra_torrc,
        )
    )
    defaults = workdir / "torrc-defaults"
    defaults.write_text("")
    name, holder_pid = info["netns"]["name"], info["netns"].get("holder_pid")
    record = procs.spawn(
        "ctor-client",
        netns.wrap(
            name,
            [*wrap, tor, "--defaults-torrc", str(defaults), "-f", str(torrc_path)],
            holder_pid=holder_pid,
        ),
        log=workdir / "stdout.log",
        die_with_parent=True,
    )
    client = CTorClient(
        record,
        data_dir,
        torrc_path,
        data_dir / "notice.log",
        name,
        socks_port or 0,
        holder_pid=holder_pid,
    )
    if wait:
        try:
            client.wait_bootstrapped(timeout)
        except BaseException:
            client.stop()
            raise
    return client
