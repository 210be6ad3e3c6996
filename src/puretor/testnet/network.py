"""`TestNetwork`: start the private Tor network, wait until it is usable, poke it, stop it.

    with TestNetwork.start(tmp_path / "net") as net:   # current namespace must be sealed
        info = net.info                                 # network.json, see info.py
        net.kill_relay("guard1"); net.restart_relay("guard1")

`start` returns only when the authorities' consensus lists every relay with its expected flags
(and bandwidth weights, and the dual-stack relays' IPv6 ORPorts) and both onion services have
uploaded a descriptor after that point.
Whatever happens - exception, Ctrl-C, SIGTERM, interpreter exit - the processes we started are
stopped (context manager, atexit, signal handlers, and the kernel's parent-death signal).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import puretor
from puretor.testnet import censor, consensus, layout, netns, procs, profiles, torrc
from puretor.testnet.describe import build_info
from puretor.testnet.info import NetworkInfo
from puretor.testnet.layout import NetworkPlan
from puretor.testnet.prepare import NodeFiles, Prepared, prepare
from puretor.testnet.procs import ProcRecord

TARGETS = "targets"  # process name of the targets daemon
LINKS = "links"  # process name of the link emulator (realistic profile)
HOLDER = "netns-holder"  # process name of the rootless namespace's holder
UPLOAD_OK = "status 200"  # in "Uploading hidden service descriptor: finished with status 200"


class NetworkError(RuntimeError):
    pass


# Environment overrides, e.g. to try another tor build: PURETOR_TOR=/opt/tor/bin/tor
BINARY_ENV = {"tor": "PURETOR_TOR", "tor-gencert": "PURETOR_TOR_GENCERT"}


def find_binary(name: str) -> str | None:
    override = os.environ.get(BINARY_ENV.get(name, ""), "")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).exists():
        found = str(Path("/usr/sbin", name))
    if found is None and Path("/usr/bin", name).exists():
        found = str(Path("/usr/bin", name))
    return found


def missing_requirements(named_netns: bool = False, rootless: bool = False) -> list[str]:
    """What this machine lacks to run the network (empty when all is there)."""
    needed = ["tor", "tor-gencert"]
    needed += ["ip"] if named_netns or rootless else []
    needed += ["nsenter"] if rootless else []
    return [f"`{b}` not found" for b in needed if find_binary(b) is None]


def tail(path: Path | str, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(f"    {line}" for line in text[-lines:])


_signals_installed = False


def _install_signal_handlers() -> None:
    """On SIGTERM/SIGHUP: stop every process we started, then die of the signal as before.

    (Turning the signal into an exception instead would let pytest treat it as one failed test
    and carry on.) Parent-death signals cover SIGKILL; Ctrl-C arrives as KeyboardInterrupt and
    unwinds through `stop` via context managers, fixtures and atexit.
    """
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    _signals_installed = True

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            procs.stop_all(timeout=5.0)
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, handler)


class TestNetwork:
    """A running private Tor network of Debian's C tor."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        workdir: Path | str,
        *,
        netns: str | None = None,
        plan: NetworkPlan | None = None,
        detach: bool = False,
        rootless: bool = False,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.netns = netns
        self.rootless = rootless
        self.holder: ProcRecord | None = None  # rootless: the process keeping the namespace
        self.left_running: list[int] = []  # others still in our namespace when we stopped
        self.plan = plan or NetworkPlan()
        self.detach = detach  # CLI `up`: processes outlive this Python process
        self.records: dict[str, ProcRecord] = {}
        self._info: NetworkInfo | None = None
        self.censored: list[str] | None = None
        self._stopped = False
        tor, gencert = find_binary("tor"), find_binary("tor-gencert")
        self.tor = tor or "tor"
        self.gencert = gencert or "tor-gencert"

    # ---- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path | str,
        *,
        netns: str | None = None,
        timeout: float = 240.0,
        plan: NetworkPlan | None = None,
        detach: bool = False,
        rootless: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> TestNetwork:
        """Start the network in `netns` (a named namespace, created if needed), or with
        `rootless` in a new user + network namespace kept by a holder process, or else in the
        current namespace, which must then already be sealed (only loopback)."""
        if rootless and netns is not None:
            raise ValueError("a rootless network has no named namespace")
        net = cls(workdir, netns=netns, plan=plan, detach=detach, rootless=rootless)
        if not detach:
            atexit.register(net.stop)
            _install_signal_handlers()
        try:
            net._start(timeout, progress or (lambda msg: None))
        except BaseException:
            net.stop()
            raise
        return net

    @classmethod
    def attach(cls, workdir: Path | str) -> TestNetwork:
        """A handle on a network started earlier (by `up`), from its state file."""
        workdir = Path(workdir).resolve()
        state = json.loads((workdir / "state.json").read_text())
        profile = state.get("profile") or {}
        plan = profiles.plan_for(profile.get("name", profiles.LOOPBACK), profile.get("seed"))
        net = cls(workdir, netns=state["netns"], plan=plan, detach=True)
        net.records = {k: ProcRecord.from_json(v) for k, v in state["processes"].items()}
        if state.get("holder"):
            net.rootless, net.holder = True, ProcRecord.from_json(state["holder"])
        if (workdir / "network.json").exists():
            net._info = json.loads((workdir / "network.json").read_text())
        return net

    def __enter__(self) -> TestNetwork:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM everything we started, SIGKILL after `timeout`; delete a named namespace.

        Processes we did not start that are still in our namespace are left alone; their PIDs
        end up in `left_running`.
        """
        if self._stopped:
            return
        self._stopped = True
        procs.stop(self.records.values(), timeout=timeout)
        self.left_running = self._others_in_namespace()
        if self.holder is not None:
            procs.stop([self.holder], timeout=timeout)
            (self.workdir / f"{HOLDER}.ready").unlink(missing_ok=True)
        if self.netns is not None:
            try:
                netns.delete_named(self.netns)
            except netns.NamespaceError as exc:
                print(f"puretor.testnet: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def _others_in_namespace(self) -> list[int]:
        if self.holder is not None:
            ns = netns.netns_id(self.holder.pid) if procs.is_alive(self.holder) else None
            pids = netns.pids_in_netns(ns) if ns else []
            return [p for p in pids if p != self.holder.pid]
        if self.netns is not None and netns.netns_exists(self.netns):
            return netns.pids_in(self.netns)
        return []

    @property
    def info(self) -> NetworkInfo:
        if self._info is None:
            raise NetworkError("the network is not ready (no network.json yet)")
        return self._info

    # ---- poking at nodes (fault tests) --------------------------------------------------------------

    def is_running(self, nickname: str) -> bool:
        rec = self.records.get(nickname)
        return rec is not None and procs.is_alive(rec)

    def stop_node(self, nickname: str, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        procs.stop([self._record(nickname)], sig=sig, timeout=timeout)

    def kill_relay(self, nickname: str) -> None:
        """SIGKILL: the relay vanishes without closing anything (a crash)."""
        self.stop_node(nickname, sig=signal.SIGKILL)

    def pause_node(self, nickname: str) -> None:
        """SIGSTOP: the process keeps its connections open but stops answering (a hang)."""
        procs.signal_proc(self._record(nickname), signal.SIGSTOP)

    def resume_node(self, nickname: str) -> None:
        procs.signal_proc(self._record(nickname), signal.SIGCONT)

    def stop_authority(self, nickname: str) -> None:
        if self.plan.node(nickname).role != "authority":
            raise ValueError(f"{nickname} is not an authority")
        self.stop_node(nickname)

    def start_node(self, nickname: str) -> None:
        rec = self._record(nickname)
        if procs.is_alive(rec):
            return
        env = _python_env() if nickname in (TARGETS, LINKS) else None
        self._spawn(nickname, rec.argv, Path(rec.log), env=env)

    start_authority = start_node

    def restart_relay(self, nickname: str) -> None:
        """Stop (gracefully) if running, then start again with the same keys and torrc."""
        self.stop_node(nickname)
        self.start_node(nickname)

    def node_log(self, nickname: str) -> Path:
        """The notice log of a tor process (the targets daemon and the link emulator: their
        stdout logs)."""
        if nickname == TARGETS:
            return self.workdir / "targets" / "daemon.log"
        if nickname == LINKS:
            return self.workdir / "links.log"
        return self.workdir / "nodes" / nickname / "notice.log"

    def log_offset(self, nickname: str) -> int:
        """Current size of `node_log`, to wait for lines logged after this point."""
        return _size(self.node_log(nickname))

    def wait_for_log(
        self, nickname: str, needle: str, *, since: int = 0, timeout: float = 60.0
    ) -> None:
        """Wait until `needle` appears in the node's log after byte offset `since`."""
        log = self.node_log(nickname)
        self._wait(
            lambda: _logged_since(log, since, needle), timeout, f"{needle!r} in {log}", logs=[log]
        )

    def _record(self, nickname: str) -> ProcRecord:
        try:
            return self.records[nickname]
        except KeyError:
            raise KeyError(f"no process named {nickname!r}") from None

    # ---- running things inside the namespace ----------------------------------------------------------

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside the network's namespace."""
        holder_pid = self.holder.pid if self.holder is not None else None
        return netns.wrap(self.netns, argv, holder_pid=holder_pid)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.exec_argv(argv), **kwargs)

    # ---- consensus --------------------------------------------------------------------------------

    def latest_consensus(self) -> consensus.ConsensusSummary | None:
        """The newest microdesc consensus any authority holds."""
        best: consensus.ConsensusSummary | None = None
        for node in self.plan.by_role("authority"):
            path = self.workdir / "nodes" / node.nickname / "cached-microdesc-consensus"
            try:
                summary = consensus.parse(path.read_text(errors="replace"))
            except (FileNotFoundError, ValueError, IndexError):
                continue
            if best is None or summary.valid_after > best.valid_after:
                best = summary
        return best

    def wait_for_consensus(
        self,
        predicate: Callable[[consensus.ConsensusSummary], bool],
        timeout: float,
        what: str = "a matching consensus",
    ) -> consensus.ConsensusSummary:
        found: list[consensus.ConsensusSummary] = []

        def check() -> bool:
            c = self.latest_consensus()
            if c is not None and predicate(c):
                found.append(c)
                return True
            return False

        self._wait(check, timeout, what, logs=self._authority_logs())
        return found[0]

    # ---- start-up --------------------------------------------------------------------------------------

    def _start(self, timeout: float, progress: Callable[[str], None]) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        missing = missing_requirements(named_netns=self.netns is not None, rootless=self.rootless)
        if missing:
            raise NetworkError("cannot start the test network: " + "; ".join(missing))
        if self.rootless:
            self._start_holder()
        elif self.netns is not None:
            netns.create_named(self.netns)
        else:
            netns.require_sealed(None)
            netns.add_target_route(None)
        self._write_state()  # even a half-started network can be taken down by `down`
        if self.plan.ipv6_addresses and not self._add_ipv6_addresses(progress):
            self.plan = self.plan.without_ipv6()

        obfs4proxy = find_binary("obfs4proxy")
        if obfs4proxy is None and any(n.transport for n in self.plan.nodes):
            progress("no obfs4 bridge: obfs4proxy is not installed")
            self.plan = self.plan.without_transports()

        progress("generating keys and configuration")
        prep = prepare(
            self.workdir,
            self.plan,
            tor=self.tor,
            gencert=self.gencert,
            obfs4proxy=obfs4proxy or "obfs4proxy",
        )
        self.censored = self._install_censor(progress)

        if prep.links_config is not None:
            # First: the advertised ORPorts (and the targets' addresses) are its listeners.
            progress("starting the link emulator (realistic profile)")
            self._start_links(prep.links_config)

        progress("starting targets, DNS and tor processes")
        self._spawn(
            TARGETS,
            [
                sys.executable,
                "-m",
                "puretor.testnet",
                "serve-targets",
                "--config",
                str(prep.targets_config),
            ],
            prep.workdir / "targets" / "daemon.log",
            env=_python_env(),
        )

        def start_tor(nf: NodeFiles) -> None:
            argv = [self.tor, "--defaults-torrc", str(prep.defaults_torrc), "-f", str(nf.torrc)]
            self._spawn(nf.spec.nickname, argv, nf.dir / "stdout.log")

        # The relays start at once, without waiting for the targets: the first vote is already
        # scheduled (torrc.voting_start_offset), and they need the targets only later.
        onions = [nf for nf in prep.nodes.values() if nf.spec.role == "onion-service"]
        for nf in prep.nodes.values():
            if nf not in onions:
                start_tor(nf)
        self._wait(
            prep.targets_ready.exists,
            30.0,
            "the targets daemon",
            logs=[prep.workdir / "targets" / "daemon.log"],
        )

        progress("waiting for a consensus listing every relay with its flags")
        expected = {
            nf.fingerprint: (nf.spec.nickname, layout.expected_flags(nf.spec))
            for nf in prep.nodes.values()
            if nf.fingerprint and nf.spec.is_listed
        }
        ipv6 = {
            nf.fingerprint: f"[{nf.spec.ipv6_address}]:{nf.spec.ipv6_orport}"
            for nf in prep.nodes.values()
            if nf.fingerprint and nf.spec.ipv6_address
        }
        problems: list[str] = []

        def complete(c: consensus.ConsensusSummary) -> bool:
            problems[:] = consensus.missing_flags(c, expected, ipv6)
            return not problems

        try:
            summary = self.wait_for_consensus(
                complete, max(1.0, deadline - time.monotonic()), "a complete consensus"
            )
        except NetworkError as exc:
            raise NetworkError(f"{exc}\n  last consensus problems: {problems}") from None
        progress(f"consensus valid-after {summary.valid_after} is complete")
        self._retry_consensus_fetches()

        # Onion hosts start only now: their first consensus then already has every HSDir, so
        # their first upload lands where clients will look. (Started earlier, they upload to an
        # incomplete HSDir ring and re-upload only after their next scheduled consensus fetch,
        # which costs 30-45 s with our 20 s voting interval.)
        progress("starting the onion services and waiting for their descriptors")
        offsets = {nf.spec.nickname: _size(nf.rend_log) for nf in onions}
        for nf in onions:
            self._seed_directory_cache(nf.dir, summary)
            start_tor(nf)
        self._wait(
            lambda: all((nf.hs_dir / "hostname").exists() for nf in onions),
            30.0,
            "onion service keys",
            logs=[nf.log for nf in onions],
        )
        self._wait(
            lambda: all(
                _logged_since(nf.rend_log, offsets[nf.spec.nickname], UPLOAD_OK) for nf in onions
            ),
            max(1.0, deadline - time.monotonic()),
            "onion descriptor uploads",
            logs=[nf.rend_log for nf in onions],
        )
        # Until an exit has bootstrapped itself it answers every BEGIN with END MISC, for
        # C tor clients and puretor alike: "ready" must mean the exits are usable.
        # Bridges too: a bridge serves clients the consensus it has fetched itself.
        exit_logs = [
            self.workdir / "nodes" / n.nickname / "notice.log"
            for n in self.plan.by_role("exit", "bridge")
        ]
        bridge_lines = [
            self.workdir / "nodes" / n.nickname / "pt_state" / "obfs4_bridgeline.txt"
            for n in self.plan.by_role("bridge")
            if n.transport == "obfs4"
        ]
        self._wait(
            lambda: (
                all(_logged_since(log, 0, "Bootstrapped 100%") for log in exit_logs)
                and all(p.exists() for p in bridge_lines)
            ),
            max(1.0, deadline - time.monotonic()),
            "the exits and bridges to bootstrap",
            logs=exit_logs,
        )
        progress("the exits and bridges are bootstrapped")
        self._info = build_info(
            prep,
            self.plan,
            netns=self.netns,
            holder_pid=self.holder.pid if self.holder is not None else None,
            tor=self.tor,
            summary=summary,
            elapsed=time.monotonic() - t0,
            censored=self.censored,
        )
        self._write_outputs(prep)

    def _start_links(self, config: Path) -> None:
        ready = self.workdir / "links.ready"
        ready.unlink(missing_ok=True)
        log = self.workdir / "links.log"
        argv = [sys.executable, "-m", "puretor.testnet", "serve-links", "--config", str(config)]
        self._spawn(LINKS, argv, log, env=_python_env())
        self._wait(ready.exists, 30.0, "the link emulator", logs=[log])

    def link_stats(self) -> dict[str, Any] | None:
        """The link emulator's counters (rewritten every few seconds): ``cpu_seconds`` and
        per link ``connections``, ``bytes``, ``chunks``, ``paused``; None without one."""
        try:
            stats: dict[str, Any] = json.loads((self.workdir / "links.stats.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return stats

    def _start_holder(self) -> None:
        """Start the process that makes and keeps the rootless namespace; wait until it has."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready, log = self.workdir / f"{HOLDER}.ready", self.workdir / f"{HOLDER}.log"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "puretor.testnet", "hold-netns", "--ready", str(ready)]
        self.holder = procs.spawn(
            HOLDER, argv, log=log, env=_python_env(), die_with_parent=not self.detach
        )
        self._write_state()
        self._wait(ready.exists, 30.0, "the namespace holder", logs=[log])

    def _add_ipv6_addresses(self, progress: Callable[[str], None]) -> bool:
        """Put the plan's IPv6 ORPort addresses on the namespace's ``lo``; False (the network
        then runs on IPv4 only) where that is impossible, e.g. with IPv6 disabled."""
        # One `ip` for all of them ("replace": a namespace reused keeps working).
        commands = "".join(
            f"addr replace {address}/128 dev lo nodad\n" for address in self.plan.ipv6_addresses
        )
        try:
            proc = self.run(
                ["ip", "-6", "-batch", "-"],
                input=commands,
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            problem = str(exc)
        else:
            if proc.returncode == 0:
                return True
            problem = proc.stderr.strip()
        progress(f"no IPv6 ORPorts: cannot add their addresses to lo ({problem})")
        return False

    def _install_censor(self, progress: Callable[[str], None]) -> list[str] | None:
        """Block the authorities and listed relays for censored processes (censor.py); the
        blocked addresses, or None where nft is missing (tests that need it then skip)."""
        blocked = self.plan.listed_addresses
        if not censor.available():
            progress("no censor: nft is not installed")
            return None
        censor.install(self.run, blocked, layout.CENSORED_GID)
        return blocked

    def dropped_packets(self) -> int:
        """Packets of censored processes the censor has dropped (see censor.py)."""
        return censor.dropped_packets(self.run)

    def _retry_consensus_fetches(self) -> None:
        """SIGHUP every relay, which makes tor reset its download back-off and fetch now.

        Each 404 for a consensus before the first one exists grows a relay's randomized retry
        delay, so without this an exit may take another minute to learn the consensus, and
        exits are only usable once they have it.
        """
        for node in self.plan.by_role("guard", "middle", "exit", "bridge"):
            procs.signal_proc(self._record(node.nickname), signal.SIGHUP)

    def _seed_directory_cache(self, data_dir: Path, summary: consensus.ConsensusSummary) -> None:
        """Give a fresh tor the authorities' consensus, certs and microdescriptors.

        tor loads these from its DataDirectory at start, so it has enough directory info at
        once instead of after ~10 s of microdescriptor fetch retries. Used for the onion hosts
        only: clients under test must bootstrap for real.
        """
        for node in self.plan.by_role("authority"):
            src = self.workdir / "nodes" / node.nickname
            try:
                text = (src / "cached-microdesc-consensus").read_text(errors="replace")
            except FileNotFoundError:
                continue
            if consensus.parse(text).valid_after != summary.valid_after:
                continue
            for name in (
                "cached-certs",
                "cached-microdesc-consensus",
                "cached-microdescs",
                "cached-microdescs.new",
            ):
                if (src / name).exists():
                    shutil.copyfile(src / name, data_dir / name)
            return

    def _spawn(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        # Records keep the unwrapped argv, so a restart wraps it afresh.
        base = list(argv)
        rec = procs.spawn(
            name, self.exec_argv(base), log=log, env=env, die_with_parent=not self.detach
        )
        self.records[name] = ProcRecord(rec.name, rec.pid, rec.starttime, base, rec.log)
        self._write_state()

    def _write_state(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = {
            "netns": self.netns,
            "holder": self.holder.to_json() if self.holder is not None else None,
            "profile": {"name": self.plan.profile, "seed": self.plan.seed},
            "processes": {k: r.to_json() for k, r in self.records.items()},
        }
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.rename(self.workdir / "state.json")

    def _authority_logs(self) -> list[Path]:
        return [
            self.workdir / "nodes" / n.nickname / "notice.log"
            for n in self.plan.by_role("authority")
        ]

    def _wait(
        self, ready: Callable[[], bool], timeout: float, what: str, *, logs: Sequence[Path]
    ) -> None:
        """Poll `ready`; fail fast (with log tails) if one of our processes died."""
        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return
            # While starting, a dead process means failure; once ready, fault tests kill
            # processes on purpose, so then we just wait.
            ours = {**self.records, **({HOLDER: self.holder} if self.holder else {})}
            dead = [n for n, r in ours.items() if not procs.is_alive(r)]
            if dead and self._info is None:
                name = dead[0]
                raise NetworkError(
                    f"{name} exited while waiting for {what}:\n{tail(ours[name].log)}"
                    + self._node_log_tail(name)
                )
            if time.monotonic() > deadline:
                tails = "\n".join(f"  {p}:\n{tail(p)}" for p in logs)
                raise NetworkError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
            time.sleep(0.25)

    def _node_log_tail(self, name: str) -> str:
        log = self.workdir / "nodes" / name / "notice.log"
        return f"\n  {log}:\n{tail(log)}" if log.exists() else ""

    # ---- outputs -----------------------------------------------------------------------------------

    def _write_outputs(self, prep: Prepared) -> None:
        info = self.info
        auth_dir = Path(info["onion"]["client_auth"]["client_onion_auth_dir"])
        write_onion_auth_dir(auth_dir, info)
        client_dir = prep.workdir / "client-data"
        client_dir.mkdir(mode=0o700, exist_ok=True)
        Path(info["client_torrc"]).write_text(
            torrc.client_torrc(
                client_dir,
                prep.authorities,
                socks_port=info["socks_port"],
                onion_auth_dir=auth_dir,
            )
        )
        tmp = prep.workdir / "network.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.rename(prep.workdir / "network.json")


def write_onion_auth_dir(directory: Path, info: NetworkInfo) -> Path:
    """A ClientOnionAuthDir holding the key for the client-auth onion service."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / "testnet.auth_private"
    path.write_text(info["onion"]["client_auth"]["auth_private_line"] + "\n")
    path.chmod(0o600)
    return directory


def _python_env() -> dict[str, str]:
    """Our environment, with puretor importable even when it is not installed."""
    env = dict(os.environ)
    src = str(Path(puretor.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _logged_since(path: Path, offset: int, needle: str) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return needle.encode() in f.read()
    except FileNotFoundError:
        return False
