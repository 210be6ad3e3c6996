"""Every option tor-client accepts shows its effect: the effects that need real relays.

Each test runs two or more clients that differ in one option (several in one event loop, so
that they cost the time of one) and shows what the option changes: SOCKS replies and log lines
of two ``tor-client`` daemons, or, in process, which guards first hops use, how many builds run
at once, when idle circuits close, when a stream gives up on a silent exit or a build on a
stalled relay, which addresses channels go to (the dual-stack relays of the network), which
destinations are refused before any stream is opened. Tests are marked with the options whose
effect they show (``@pytest.mark.options``; tests/unit/test_option_effects_covered.py checks
that every option has one). Timing bounds are loose: a lower bound the code guarantees, an
upper bound a few seconds above it.

Two of these found places where puretor did not do what C tor's manual says (fixed):
CircuitBuildTimeout turned learning off instead of being the initial value, and
UseEntryGuards 0 still used directory guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import struct
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from ptclient import PtClient
from test_zz_hardening_helpers import start_daemon, wait_listening

from puretor import (
    BootstrapError,
    IsolationToken,
    OnionError,
    StreamRefused,
    TorClient,
    TorConfig,
)
from puretor.aio.circuit import TunnelHandle
from puretor.proto.circuit import Circuit
from puretor.proto.conflux import DesiredUx, LinkPayload
from puretor.proto.relaymsg import EndReason, RelayCommand
from puretor.testnet import NetworkInfo, TestNetwork

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(600)]

ROUNDS = 20  # isolated streams per client where first hops are counted


# --------------------------------------------------------------------------- helpers


class _Channels:
    """Every puretor channel connect of this process (the ``puretor.channel.connect`` audit
    event: the one place puretor connects), by the ChannelManager - so the client - making it."""

    def __init__(self) -> None:
        self.by_manager: dict[int, list[tuple[str, int]]] = defaultdict(list)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "puretor.channel.connect":
            return
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "_open":
            frame = frame.f_back  # type: ignore[assignment]
        manager = frame.f_locals.get("self") if frame is not None else None
        self.by_manager[id(manager)].append((str(args[0]), int(args[1])))

    def of(self, tor: TorClient) -> list[tuple[str, int]]:
        return list(self.by_manager.get(id(tor._chanmgr), ()))


CHANNELS = _Channels()
sys.addaudithook(CHANNELS.hook)


def net_config(info: NetworkInfo, data_dir: Path, **options: Any) -> TorConfig:
    """The private network as torrc options (the same parser as ``tor-client -f``)."""
    base: dict[str, Any] = {
        "DataDirectory": data_dir,
        "TestingTorNetwork": 1,
        "UseDefaultFallbackDirs": 0,
        "SocksPort": 0,
        "DirAuthority": [
            line.removeprefix("DirAuthority ") for line in info["dir_authority_lines"]
        ],
    }
    base.update(options)
    return TorConfig.from_options(**base)


@contextlib.asynccontextmanager
async def clients(
    info: NetworkInfo, workdir: Path, variants: Mapping[str, Mapping[str, Any]]
) -> AsyncIterator[dict[str, TorClient]]:
    """One bootstrapped TorClient per variant (DataDirectory ``workdir/NAME``); all closed
    afterwards, whatever happens."""
    tors = {
        name: TorClient(net_config(info, workdir / name, **options), bootstrap_timeout=90)
        for name, options in variants.items()
    }
    try:
        await asyncio.gather(*(tor.bootstrap() for tor in tors.values()))
        yield tors
    finally:
        await asyncio.gather(*(tor.aclose() for tor in tors.values()), return_exceptions=True)


def run(coro: Coroutine[Any, Any, Any], limit: float = 180.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, limit))


async def get_ip(
    tor: TorClient, isolation: Any, port: int = 80, host: str = "target.test"
) -> tuple[str, TunnelHandle]:
    """GET /ip through Tor: (the source address the target saw, the circuit used)."""
    reader, writer = await tor.open_connection(host, port, isolation=isolation)
    try:
        circuit = writer.get_extra_info("circuit")
        writer.write(f"GET /ip HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    return body.decode().strip(), circuit


async def isolated_circuits(tor: TorClient, n: int = ROUNDS) -> list[TunnelHandle]:
    """``n`` streams with fresh isolation tokens, at once: ``n`` different circuits."""
    results = await asyncio.gather(*(get_ip(tor, IsolationToken(f"r{i}")) for i in range(n)))
    circuits = [circuit for _, circuit in results]
    assert len({id(c) for c in circuits}) == n
    return circuits


def names(circuit: TunnelHandle) -> list[str]:
    return [h.target.nickname for h in circuit.path]


def exit_of(circuit: TunnelHandle) -> str:
    return circuit.path[-1].target.nickname


def dual_stack(info: NetworkInfo) -> dict[str, tuple[str, int]]:
    """{nickname: (IPv6 address, ORPort)} of the relays with an IPv6 ORPort."""
    out = {}
    for r in info["relays"]:
        if r.get("ipv6_address") and r.get("ipv6_orport"):
            out[r["nickname"]] = (str(r["ipv6_address"]), int(r["ipv6_orport"] or 0))
    return out


def need_dual_stack(info: NetworkInfo) -> dict[str, tuple[str, int]]:
    """`dual_stack`; where the network has none (IPv6 unusable in its namespace, so it runs
    on IPv4 only) the test skips - or fails in CI, which must not skip silently."""
    dual = dual_stack(info)
    if not dual:
        reason = "the private network has no IPv6 ORPorts: IPv6 is off in its namespace"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return dual


def is_ipv6(address: str) -> bool:
    return ipaddress.ip_address(address).version == 6


@pytest.fixture(autouse=True)
def _clean_tmp_path(tmp_path: Path) -> Iterator[None]:
    """Each test's temporary directory goes when it ends, pass or fail (asserts carry what
    matters of the logs in it)."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def exits_serve(testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start once both exits serve target.test by name (right after the network is ready an
    exit has been seen to end streams with MISC for a while; that is not what these test)."""
    info = testnet.info
    want = set(info["targets"]["exit_addresses"])

    workdir = tmp_path_factory.mktemp("probe")

    async def probe() -> set[str]:
        seen: set[str] = set()
        async with clients(info, workdir, {"probe": {}}) as tors:
            deadline = time.monotonic() + 90
            while seen != want and time.monotonic() < deadline:
                got = await asyncio.gather(
                    *(get_ip(tors["probe"], IsolationToken()) for _ in range(6)),
                    return_exceptions=True,
                )
                seen.update(r[0] for r in got if isinstance(r, tuple))
        return seen

    try:
        seen = run(probe(), 150)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert seen == want, f"exits {sorted(want - seen)} never served target.test"


# --------------------------------------------------------------------------- SOCKS daemons


@pytest.fixture(scope="module")
def daemons(testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two ``tor-client`` daemons that differ in every SOCKS and logging option:

    A: SafeSocks 1, SocksPolicy accepting 127.0.0.1 only, SafeLogging 0, defaults otherwise;
    B: TestSocks 1, SocksPolicy rejecting 127.0.0.1 (127.0.0.2 is unmatched: accepted),
       SocksTimeout 3, LogTimeGranularity 1 msec, a second Log line (info, to a file), PidFile.
    """
    info = testnet.info
    a_dir, b_dir = tmp_path_factory.mktemp("daemon-a"), tmp_path_factory.mktemp("daemon-b")
    a_lines = [
        "SocksPort 127.0.0.1:auto",
        "Log notice stdout",
        "SafeLogging 0",
        "SafeSocks 1",
        "SocksPolicy accept 127.0.0.1",
        "SocksPolicy reject *",
    ]
    b_lines = [
        "SocksPort 127.0.0.1:auto",
        "Log notice stdout",
        f"Log info file {b_dir / 'info.log'}",
        "TestSocks 1",
        "SocksPolicy reject 127.0.0.1",
        "SocksTimeout 3",
        "LogTimeGranularity 1 msec",
        f"PidFile {b_dir / 'tor.pid'}",
    ]
    started: list[PtClient] = []
    try:
        for workdir, lines in ((a_dir, a_lines), (b_dir, b_lines)):
            started.append(start_daemon(info, workdir, lines, audit=False, wait=False))
        for daemon in started:
            wait_listening(daemon)
            daemon.wait_bootstrapped(120)
        yield started[0], started[1]
    finally:
        for daemon in started:
            daemon.stop()
        for workdir in (a_dir, b_dir):
            shutil.rmtree(workdir, ignore_errors=True)


async def socks5(
    port: int, host: str, dest_port: int = 80, *, source: str = "127.0.0.1", timeout: float = 60
) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """A SOCKS5 CONNECT from ``source``: (reply code, reader, writer). ``host`` an IPv4
    literal goes as ATYP 1 (the application resolved the name), a name as ATYP 3."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(b"\x05\x01\x00")
        assert await asyncio.wait_for(reader.readexactly(2), timeout) == b"\x05\x00"
        try:
            addr = b"\x01" + ipaddress.IPv4Address(host).packed
        except ValueError:
            addr = b"\x03" + bytes([len(host)]) + host.encode()
        writer.write(b"\x05\x01\x00" + addr + struct.pack("!H", dest_port))
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        await reader.readexactly({1: 6, 4: 18}.get(head[3], 0))
        return head[1], reader, writer
    except BaseException:
        writer.close()
        raise


async def socks_get_ip(port: int, host: str, *, source: str = "127.0.0.1") -> str:
    code, reader, writer = await socks5(port, host, source=source)
    try:
        assert code == 0, f"SOCKS reply {code:#04x} for {host} from {source}"
        writer.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    return response.partition(b"\r\n\r\n")[2].decode().strip()


async def closed_without_reply(port: int, source: str, wait: float) -> tuple[bytes, float]:
    """Connect from ``source``, send a SOCKS5 greeting, wait up to ``wait`` seconds for
    anything: (what came back, seconds until the connection closed or ``wait`` ran out)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(b"\x05\x01\x00")
        try:
            data = await asyncio.wait_for(reader.read(100), wait)
        except ConnectionError:
            data = b""
        except TimeoutError:
            return b"(still open)", time.monotonic() - t0
    finally:
        writer.close()
    return data, time.monotonic() - t0


async def idle_until_closed(port: int, source: str, wait: float) -> float | None:
    """Connect and say nothing: seconds until the daemon drops us, None if it did not."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(100), wait)
            return time.monotonic() - t0
        return time.monotonic() - t0
    except TimeoutError:
        return None
    finally:
        writer.close()


def log_since(daemon: PtClient, offset: int) -> str:
    return daemon.log_text()[offset:]


UNSAFE_WARNING = (
    "[warn] Your application (using socks5 to port 80) is giving Tor only an IP address. "
    "Applications that do DNS resolves themselves may leak information. Consider using Socks4A "
    "(e.g. via privoxy or socat) instead. Rejecting."
)
SAFE_NOTICE = (
    "[notice] Your application (using socks5 to port 80) instructed Tor to take care of the DNS "
    "resolution itself if necessary. This is good."
)
UNSAFE_NOTICE = (
    "[notice] Your application (using socks5 to port 80) is giving Tor only an IP address: "
    "it resolved the name itself, which may leak information."
)


@pytest.mark.options("SafeSocks")
def test_safe_socks_refuses_ip_only_requests(daemons: Any, testnet: TestNetwork) -> None:
    a, b = daemons
    targets = testnet.info["targets"]
    exits = set(targets["exit_addresses"])

    async def main() -> tuple[list[int], str, str]:
        codes = []
        for _ in range(3):
            code, _r, writer = await socks5(a.socks_port, targets["ip"])
            writer.close()
            codes.append(code)
        by_name = await socks_get_ip(a.socks_port, targets["hostname"])
        by_ip_elsewhere = await socks_get_ip(b.socks_port, targets["ip"], source="127.0.0.2")
        return codes, by_name, by_ip_elsewhere

    a_offset, b_offset = len(a.log_text()), len(b.log_text())
    codes, by_name, by_ip_elsewhere = run(main())
    # SafeSocks 1: an IPv4 address is refused with NOT_ALLOWED, and C tor's warning is
    # rate-limited (one per 5 s); the same destination by name works.
    assert codes == [0x02, 0x02, 0x02]
    assert log_since(a, a_offset).count(UNSAFE_WARNING) == 1, log_since(a, a_offset)
    assert by_name in exits
    # SafeSocks 0 (B): the same IP-only request is served, without the warning.
    assert by_ip_elsewhere in exits
    assert "Rejecting." not in log_since(b, b_offset)


@pytest.mark.options("TestSocks")
def test_test_socks_says_for_each_request_whether_it_was_safe(
    daemons: Any, testnet: TestNetwork
) -> None:
    a, b = daemons
    targets = testnet.info["targets"]

    async def main() -> None:
        for host in (targets["hostname"], targets["ip"], targets["hostname"]):
            await socks_get_ip(b.socks_port, host, source="127.0.0.2")
        await socks_get_ip(a.socks_port, targets["hostname"])

    a_offset, b_offset = len(a.log_text()), len(b.log_text())
    run(main())
    b_log = log_since(b, b_offset)
    # TestSocks 1 (B): a notice per request, saying whether the name was left to Tor.
    assert b_log.count(SAFE_NOTICE) == 2, b_log
    assert b_log.count(UNSAFE_NOTICE) == 1, b_log
    # TestSocks 0 (A): nothing.
    assert "This is good." not in log_since(a, a_offset)


@pytest.mark.options("SocksPolicy", "SafeLogging")
def test_socks_policy_closes_untrusted_clients_at_once(daemons: Any, testnet: TestNetwork) -> None:
    a, b = daemons
    exits = set(testnet.info["targets"]["exit_addresses"])

    async def main() -> tuple[Any, ...]:
        return await asyncio.gather(
            closed_without_reply(a.socks_port, "127.0.0.2", 10),
            closed_without_reply(b.socks_port, "127.0.0.1", 10),
            socks_get_ip(a.socks_port, "target.test", source="127.0.0.1"),
            socks_get_ip(b.socks_port, "target.test", source="127.0.0.2"),
        )

    a_offset, b_offset = len(a.log_text()), len(b.log_text())
    denied_a, denied_b, allowed_a, allowed_b = run(main())
    # "reject *" after "accept 127.0.0.1" (A), "reject 127.0.0.1" (B): closed at once,
    # without a SOCKS reply; the address each accepts is served.
    for data, took in (denied_a, denied_b):
        assert data == b"" and took < 3.0, (data, took)
    assert allowed_a in exits and allowed_b in exits
    # C tor's notice; SafeLogging 0 (A) names the client, SafeLogging 1 (B, the default) not.
    a_log, b_log = log_since(a, a_offset), log_since(b, b_offset)
    assert "Denying socks connection from untrusted address 127.0.0.2." in a_log, a_log
    assert "Denying socks connection from untrusted address [scrubbed]." in b_log, b_log
    assert "127.0.0.1" not in b_log, b_log


@pytest.mark.options("SocksTimeout")
def test_socks_timeout_drops_idle_clients(daemons: Any) -> None:
    a, b = daemons

    async def main() -> tuple[float | None, float | None]:
        return await asyncio.gather(
            idle_until_closed(b.socks_port, "127.0.0.2", 12),
            idle_until_closed(a.socks_port, "127.0.0.1", 8),
        )

    with_3, default = run(main())
    # SocksTimeout 3 (B): dropped after ~3 s; the default (A: 2 minutes, the handshake
    # itself capped at 30 s) keeps the client longer than that.
    assert with_3 is not None and 2.5 <= with_3 <= 8.0, with_3
    assert default is None, default


_STAMP = re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d\.(\d{3}) \[(\w+)\] ", re.M)


@pytest.mark.options("Log", "LogTimeGranularity")
def test_log_lines_and_time_granularity(daemons: Any) -> None:
    a, b = daemons
    info_file = b.workdir / "info.log"
    # Log: B logs notice and up to stdout, info and up to the file; A notice only.
    b_stdout, b_file = _STAMP.findall(b.log_text()), _STAMP.findall(info_file.read_text())
    assert {level for _, level in b_stdout} <= {"notice", "warn", "err"}, b_stdout
    assert "info" in {level for _, level in b_file} and "notice" in {lvl for _, lvl in b_file}
    assert "[info]" not in a.log_text()
    # LogTimeGranularity 1 msec (B): milliseconds in the stamps; the default (A, 1 second):
    # every stamp ends in .000, as C tor's do.
    a_ms = {ms for ms, _ in _STAMP.findall(a.log_text())}
    assert a_ms == {"000"}, a_ms
    b_ms = {ms for ms, _ in b_stdout + b_file}
    assert len(b_ms) > 3, b_ms


@pytest.mark.options("PidFile")
def test_pid_file_names_the_daemon_while_it_runs(daemons: Any) -> None:
    """(Stops daemon B: keep this the last test of the daemons.)"""
    a, b = daemons
    pid_file = b.workdir / "tor.pid"
    assert pid_file.read_text() == f"{b.pid}\n"
    assert not list(a.workdir.rglob("*.pid"))  # no PidFile line, no file
    assert b.stop() == 0
    assert not pid_file.exists(), "the PidFile outlived a clean shutdown"


# --------------------------------------------------------------------------- guards


def _confirmed(data_dir: Path) -> set[str]:
    guards = json.loads((data_dir / "state.json").read_text())["guards"]
    return {g["nickname"] for g in guards if g["confirmed_idx"] is not None}


@pytest.mark.options("NumEntryGuards", "NumPrimaryGuards", "UseEntryGuards")
def test_entry_guards(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    guards = {r["nickname"] for r in info["relays"] if r["role"] == "guard"}
    assert len(guards) == 3
    # (No conflux: the legs of a set take different guards on purpose, prop 354.)
    variants = {
        "one": {"NumEntryGuards": 1, "NumPrimaryGuards": 3, "ConfluxEnabled": 0},
        "three": {"NumEntryGuards": 3, "NumPrimaryGuards": 3, "ConfluxEnabled": 0},
        "one_primary": {"NumEntryGuards": 3, "NumPrimaryGuards": 1, "ConfluxEnabled": 0},
        "no_guards": {"UseEntryGuards": 0, "ConfluxEnabled": 0},
    }

    async def main() -> dict[str, list[str]]:
        async with clients(info, tmp_path, variants) as tors:
            used = await asyncio.gather(*(isolated_circuits(tor) for tor in tors.values()))
            return {n: [names(c)[0] for c in cs] for n, cs in zip(tors, used, strict=True)}

    first = run(main())
    print({name: dict(Counter(hops)) for name, hops in first.items()})
    for name, hops in first.items():
        assert set(hops) <= guards, (name, hops)
    # NumEntryGuards 1: every circuit through one guard; 3 (with 3 primary guards): through
    # several (20 uniform picks of 3 all alike: 3^-19); and each guard used is confirmed.
    assert len(set(first["one"])) == 1
    assert _confirmed(tmp_path / "one") == set(first["one"])
    assert len(set(first["three"])) >= 2
    assert set(first["three"]) <= _confirmed(tmp_path / "three")
    # NumPrimaryGuards 1: only one primary guard, so one guard however many may be used.
    assert len(set(first["one_primary"])) == 1
    # UseEntryGuards 0: a fresh Guard-flagged first hop per circuit, and no guard state.
    assert len(set(first["no_guards"])) >= 2
    assert _confirmed(tmp_path / "no_guards") == set()


@pytest.mark.options("UseEntryGuards")
def test_use_entry_guards_0_uses_no_directory_guards_either(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    info = testnet.info
    guards = {r["nickname"] for r in info["relays"] if r["role"] == "guard"}

    async def main() -> Counter[str]:
        async with clients(info, tmp_path, {"no_guards": {"UseEntryGuards": 0}}) as tors:
            dirmgr = tors["no_guards"]._dirmgr
            # Where the next directory requests would go (bootstrapped: the refresh).
            return Counter(dirmgr._pick_source().target.nickname for _ in range(40))

    sources = run(main())
    assert set(sources) - guards, f"only (directory) guards serve the directory: {sources}"


# --------------------------------------------------------------------------- circuits


@pytest.mark.options("MaxClientCircuitsPending")
def test_max_client_circuits_pending(testnet: TestNetwork, tmp_path: Path) -> None:
    variants = {"one": {"MaxClientCircuitsPending": 1}, "default": {}}

    async def main() -> dict[str, tuple[int, int]]:
        async with clients(testnet.info, tmp_path, variants) as tors:
            used = await asyncio.gather(*(isolated_circuits(tor, 16) for tor in tors.values()))
            out = {}
            for (name, tor), circuits in zip(tors.items(), used, strict=True):
                assert tor._circmgr is not None
                out[name] = (len(circuits), tor._circmgr.pending_peak)
            return out

    result = run(main())
    print("streams served, most circuit builds at once:", result)
    # 16 concurrent streams on 16 new circuits, all served either way; the builds wait for
    # each other with MaxClientCircuitsPending 1, run side by side with the default (32).
    assert result["one"] == (16, 1)
    assert result["default"][0] == 16 and result["default"][1] > 1


@pytest.mark.options("NewCircuitPeriod", "MaxCircuitDirtiness")
def test_dirty_circuits_are_left_and_closed(testnet: TestNetwork, tmp_path: Path) -> None:
    variants = {
        "period_1": {"MaxCircuitDirtiness": 10, "NewCircuitPeriod": 1},
        "period_60": {"MaxCircuitDirtiness": 10, "NewCircuitPeriod": 60},
        "default": {},  # MaxCircuitDirtiness 10 minutes
    }

    async def main() -> tuple[dict[str, float], dict[str, bool], dict[str, bool], float]:
        async with clients(testnet.info, tmp_path, variants) as tors:
            tokens = {name: IsolationToken(name) for name in tors}
            t_used = time.monotonic()  # before the streams: their circuits are dirty later
            used = await asyncio.gather(*(get_ip(tor, tokens[n]) for n, tor in tors.items()))
            first = {name: circuit for name, (_, circuit) in zip(tors, used, strict=True)}
            closed_after: dict[str, float] = {}
            while time.monotonic() - t_used < 17:
                for name, circuit in first.items():
                    if name not in closed_after and not circuit.is_open:
                        closed_after[name] = time.monotonic() - t_used
                if "period_1" in closed_after and time.monotonic() - t_used > 12.5:
                    break
                await asyncio.sleep(0.1)
            waited = time.monotonic() - t_used
            still_open = {name: circuit.is_open for name, circuit in first.items()}
            again = await asyncio.gather(*(get_ip(tor, tokens[n]) for n, tor in tors.items()))
            reused = {n: c is first[n] for n, (_, c) in zip(tors, again, strict=True)}
            return closed_after, still_open, reused, waited

    closed_after, still_open, reused, waited = run(main())
    print(f"closed after {closed_after}; open at {waited:.1f}s: {still_open}; reused {reused}")
    # NewCircuitPeriod 1: the idle circuit, dirty for more than MaxCircuitDirtiness (10 s),
    # is closed at the next check, within a second or so; with NewCircuitPeriod 60 no check
    # has run yet and it is still open.
    assert 10.0 <= closed_after.get("period_1", 99) <= 15.0, closed_after
    assert still_open["period_60"] and still_open["default"], still_open
    # MaxCircuitDirtiness 10: a new stream with the same isolation no longer goes on that
    # circuit, open or not; with the default (10 minutes) it does.
    assert reused == {"period_1": False, "period_60": False, "default": True}, reused


@pytest.mark.options("CircuitPriorityHalflife")
def test_circuit_priority_halflife_sets_the_channels_scheduler(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    variants = {
        "default": {},  # -1: the consensus CircuitPriorityHalflifeMsec (30000 here)
        "short": {"CircuitPriorityHalflife": 2.5},
        "zero": {"CircuitPriorityHalflife": 0},  # too small: C tor's default, with a warning
    }

    async def main() -> dict[str, set[float]]:
        async with clients(testnet.info, tmp_path, variants) as tors:
            await asyncio.gather(*(get_ip(tor, IsolationToken()) for tor in tors.values()))
            return {
                name: {c.mux.halflife for c in tor._chanmgr._channels.values()}
                for name, tor in tors.items()
            }

    assert run(main()) == {"default": {30.0}, "short": {2.5}, "zero": {30.0}}


@pytest.mark.options("MaxMemInQueues")
def test_max_mem_in_queues_closes_the_circuits_of_readers_that_stopped(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    """Six streams each GET 100 MiB on a circuit of their own and read nothing.  Flow control
    stops each exit after a few hundred KB (XOFF), so together they hold more than 1 MB: the
    default limit lets them, ``MaxMemInQueues 1 MB`` closes the circuits with the oldest
    queued data until the total is under it, and new streams still work."""
    variants = {"default": {}, "small": {"MaxMemInQueues": "1 MB"}}
    path = "/files/100MiB"

    async def stalled_readers(
        tor: TorClient, n: int = 6
    ) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        conns = []
        for i in range(n):
            reader, writer = await tor.open_connection(
                "target.test", 80, isolation=IsolationToken(f"slow{i}")
            )
            writer.write(f"GET {path} HTTP/1.0\r\nHost: target.test\r\n\r\n".encode())
            conns.append((reader, writer))  # never read: asyncio's buffer fills, then ours
        return conns

    async def settle(tor: TorClient, done: Any, limit: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while not done(tor.stats()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return tor.stats()

    async def main() -> dict[str, Any]:
        async with clients(testnet.info, tmp_path, variants) as tors:
            default, small = tors["default"], tors["small"]
            # One client at a time: the target serves six stalled downloads at once.
            conns = await stalled_readers(default)
            held = await settle(default, lambda s: s["queued_bytes"] > 1_200_000)
            await asyncio.sleep(2.0)
            steady = default.stats()  # flow control (XOFF) stopped the exits
            for _, writer in conns:
                writer.close()
            conns = await stalled_readers(small)
            oom = await settle(small, lambda s: s["oom_tunnels_closed"] >= 1)
            await asyncio.sleep(2.0)  # the survivors keep holding what they hold
            oom = small.stats()
            failed = sum(reader.exception() is not None for reader, _ in conns)
            ip, _ = await get_ip(small, IsolationToken("after"))
            for _, writer in conns:
                writer.close()
            return {"held": held, "steady": steady, "oom": oom, "failed": failed, "ip": ip}

    out = run(main())
    held, oom = out["held"], out["oom"]
    print({k: held[k] for k in ("queued_bytes", "max_mem_in_queues", "oom_events")})
    print({k: oom[k] for k in ("queued_bytes", "queued_bytes_peak", "oom_tunnels_closed")})
    assert held["queued_bytes"] > 1_200_000 and held["oom_events"] == 0
    # Without a small limit flow control alone bounds it: at most ~2 MB per stalled stream.
    steady = out["steady"]
    assert steady["queued_bytes"] < 6 * 2 * 2**20 and steady["oom_events"] == 0
    assert held["max_mem_in_queues"] >= 256 * 2**20  # C tor's default: from the RAM size
    assert oom["max_mem_in_queues"] == 2**20 and oom["oom_tunnels_closed"] >= 1
    # Under the limit after each check; the peak is at most one read past it.
    assert oom["queued_bytes"] < 2**20 and oom["queued_bytes_peak"] < 2**20 + 512 * 1024
    assert out["failed"] >= oom["oom_tunnels_closed"] >= 1  # those streams got an error
    assert out["ip"]  # a new stream works


@pytest.mark.options("ConfluxClientUX")
def test_conflux_client_ux_goes_into_the_link_cells(
    testnet: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    links: dict[int, bytes] = {}  # id(circuit) -> its CONFLUX_LINK body
    real_seal = Circuit.seal

    def spy(self: Circuit, command: int, stream_id: int, data: bytes = b"", **kw: Any) -> bytes:
        if command == RelayCommand.CONFLUX_LINK:
            links[id(self)] = data
        return real_seal(self, command, stream_id, data, **kw)

    monkeypatch.setattr(Circuit, "seal", spy)
    variants = {"default": {}, "latency": {"ConfluxClientUX": "latency"}}

    async def main() -> dict[str, list[int]]:
        async with clients(testnet.info, tmp_path, variants) as tors:

            async def on_a_set(tor: TorClient) -> list[int]:
                assert tor._circmgr is not None
                deadline = time.monotonic() + 30
                while tor._circmgr.conflux_sets_linked < 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                _, circuit = await get_ip(tor, IsolationToken())
                assert circuit.conflux is not None, "the stream did not go on a conflux set"
                legs = circuit.tunnel.circuits
                assert len(legs) > 1
                return [LinkPayload.decode(links[id(leg)]).desired_ux for leg in legs]

            got = await asyncio.gather(*(on_a_set(tor) for tor in tors.values()))
            return dict(zip(tors, got, strict=True))

    ux = run(main())
    # Each leg of the set carrying the stream asked the exit for the configured scheduler
    # (and the exit linked it): throughput by default, latency when configured.
    assert ux["default"] == [DesiredUx.HIGH_THROUGHPUT] * 2, ux
    assert ux["latency"] == [DesiredUx.MIN_LATENCY] * 2, ux


# --------------------------------------------------------------------------- internal addresses


@pytest.mark.options("ClientRejectInternalAddresses")
def test_internal_destinations_are_refused_before_any_stream(
    testnet: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    begins: Counter[int] = Counter()  # BEGINs sent, by client
    real_attach = TorClient._attach

    async def counting(self: TorClient, *args: Any, **kwargs: Any) -> Any:
        begins[id(self)] += 1
        return await real_attach(self, *args, **kwargs)

    monkeypatch.setattr(TorClient, "_attach", counting)
    variants = {
        "reject": {"ClientRejectInternalAddresses": 1},
        "allow": {"ClientRejectInternalAddresses": 0},  # (the default under TestingTorNetwork)
    }

    async def main() -> dict[str, list[tuple[str, int, float]]]:
        async with clients(testnet.info, tmp_path, variants) as tors:
            out: dict[str, list[tuple[str, int, float]]] = {}
            for name, tor in tors.items():
                out[name] = []
                for host in ("127.0.0.1", "localhost"):
                    before, t0 = begins[id(tor)], time.monotonic()
                    with pytest.raises(StreamRefused) as refused:
                        await tor.open_connection(host, 80, isolation=IsolationToken())
                    out[name].append(
                        (str(refused.value), begins[id(tor)] - before, time.monotonic() - t0)
                    )
            return out

    result = run(main())
    print(result)
    # ClientRejectInternalAddresses 1: refused at once, naming the option; no BEGIN sent.
    for message, sent, took in result["reject"]:
        assert "ClientRejectInternalAddresses" in message and sent == 0 and took < 1.0
    # 0 (the private network's default): the exits are asked, and answer.
    for message, sent, _ in result["allow"]:
        assert "ClientRejectInternalAddresses" not in message and sent >= 1, message
        assert "stream ended by exit" in message, message


@pytest.mark.options("ClientDNSRejectInternalAddresses")
def test_exit_answers_pointing_inside_are_ignored(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    name = info["dns"]["internal_hostname"]
    internal = info["dns"]["names"][name]
    variants = {
        "accept": {"ClientDNSRejectInternalAddresses": 0},
        "reject": {"ClientDNSRejectInternalAddresses": 1},
    }

    async def main() -> dict[str, Any]:
        async with clients(info, tmp_path, variants) as tors:
            out: dict[str, Any] = {}
            for key, tor in tors.items():
                out[f"{key} target"] = await tor.resolve(info["targets"]["hostname"])
                try:
                    out[key] = await tor.resolve(name)
                except StreamRefused as exc:
                    out[key] = exc
            return out

    out = run(main())
    # The exit resolves the name to 127.0.0.1 (our DNS says so): with the option 0 the
    # answer is taken, with 1 it is dropped, and the name does not resolve.
    assert out["accept"] == [internal]
    assert isinstance(out["reject"], StreamRefused), out["reject"]
    assert out["reject"].reason == EndReason.RESOLVEFAILED
    assert "internal" in str(out["reject"])
    assert out["accept target"] == out["reject target"] == [info["targets"]["ip"]]


@pytest.mark.options("TestingTorNetwork")
def test_testing_tor_network(testnet: TestNetwork, tmp_path: Path) -> None:
    """The same private network, with and without TestingTorNetwork: its onion service time
    periods (24 voting intervals, not a day) and its defaults (internal addresses allowed)."""
    info = testnet.info
    onion = info["onion"]["plain"]
    variants = {"testing": {}, "public_rules": {"TestingTorNetwork": 0}}

    async def main() -> dict[str, dict[str, Any]]:
        async with clients(info, tmp_path, variants) as tors:
            out: dict[str, dict[str, Any]] = {}
            for key, tor in tors.items():
                out[key] = {"ip": (await get_ip(tor, IsolationToken()))[0]}
                try:
                    reader, writer = await tor.open_connection(onion["address"], 80)
                    writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    out[key]["onion"] = (await reader.read()).partition(b"\r\n\r\n")[2]
                    writer.close()
                except OnionError as exc:
                    out[key]["onion"] = exc
                try:
                    await tor.open_connection("127.0.0.1", 80)
                except StreamRefused as exc:
                    out[key]["internal"] = str(exc)
            return out

    out = run(main())
    exits = set(info["targets"]["exit_addresses"])
    assert out["testing"]["ip"] in exits and out["public_rules"]["ip"] in exits
    assert out["testing"]["onion"] == onion["index_text"].encode()
    missing = out["public_rules"]["onion"]
    assert isinstance(missing, OnionError) and "descriptor not found" in str(missing), missing
    assert "stream ended by exit" in out["testing"]["internal"]
    assert "ClientRejectInternalAddresses" in out["public_rules"]["internal"]


# --------------------------------------------------------------------------- address families


@pytest.mark.options("ClientUseIPv4", "ClientUseIPv6", "ClientPreferIPv6ORPort")
def test_address_families_of_first_hops(testnet: TestNetwork, tmp_path: Path) -> None:
    info = testnet.info
    dual = need_dual_stack(info)
    guards = {r["nickname"] for r in info["relays"] if r["role"] == "guard"}
    assert guards - set(dual), "no IPv4-only guard to tell the families apart"
    spread = {"NumEntryGuards": 3, "NumPrimaryGuards": 3}  # every guard takes circuits
    variants = {
        "default": spread,
        "prefer_ipv6": {**spread, "ClientPreferIPv6ORPort": 1},
        "prefer_but_no_ipv6": {**spread, "ClientPreferIPv6ORPort": 1, "ClientUseIPv6": 0},
        "no_ipv4": {**spread, "ClientUseIPv4": 0},
    }

    async def main() -> dict[str, tuple[list[tuple[str, str]], list[tuple[str, int]]]]:
        async with clients(info, tmp_path, variants) as tors:
            used = await asyncio.gather(*(isolated_circuits(tor) for tor in tors.values()))
            return {
                name: (
                    [(c.path[0].target.nickname, c.path[0].target.address) for c in circuits],
                    CHANNELS.of(tor),
                )
                for (name, tor), circuits in zip(tors.items(), used, strict=True)
            }

    got = run(main())
    for name, (hops, channels) in got.items():
        print(name, sorted(Counter(hops).items()), sorted(set(channels)))
        assert channels, name
    # Default (ClientPreferIPv6ORPort auto): IPv4 for every connection, dual-stack relays
    # (directory authorities, guard1, guard2) included.
    hops, channels = got["default"]
    assert not [a for a, _ in channels if is_ipv6(a)], channels
    assert {n for n, _ in hops} & set(dual)
    # ClientPreferIPv6ORPort 1: IPv6 to every relay that has it, IPv4 to the others.
    hops, channels = got["prefer_ipv6"]
    for nickname, address in hops:
        if nickname in dual:
            assert address == dual[nickname][0], (nickname, address)
        else:
            assert not is_ipv6(address), (nickname, address)
    assert {n for n, _ in hops} & set(dual) and {n for n, _ in hops} - set(dual), hops
    ipv4_relay = {r["address"]: r["nickname"] for r in info["relays"]}
    assert not [a for a, _ in channels if not is_ipv6(a) and ipv4_relay[a] in dual], channels
    # ... unless ClientUseIPv6 is 0: IPv4 only again.
    hops, channels = got["prefer_but_no_ipv6"]
    assert not [a for a, _ in channels if is_ipv6(a)], channels
    assert {n for n, _ in hops} & set(dual)
    # ClientUseIPv4 0: nothing but IPv6, the directory fetches included; the IPv4-only guard
    # is never a first hop.
    hops, channels = got["no_ipv4"]
    assert all(is_ipv6(a) for a, _ in channels), channels
    assert {n for n, _ in hops} <= set(dual), hops
    assert set(channels) <= {(a, p) for a, p in dual.values()}, channels


@pytest.mark.options("ClientUseIPv4")
def test_no_usable_address_family_is_a_clear_bootstrap_error(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    """ClientUseIPv4 0 where the directory authorities have IPv4 only (their DirAuthority
    lines without ``ipv6=``): the bootstrap fails at once, saying why."""
    info = testnet.info
    ipv4_only = [
        re.sub(r" ipv6=\S+", "", line.removeprefix("DirAuthority "))
        for line in info["dir_authority_lines"]
    ]

    async def main() -> tuple[BootstrapError, float, list[tuple[str, int]]]:
        tor = TorClient(
            net_config(info, tmp_path / "d", ClientUseIPv4=0, DirAuthority=ipv4_only),
            bootstrap_timeout=30,
        )
        t0 = time.monotonic()
        try:
            with pytest.raises(BootstrapError) as failed:
                await tor.bootstrap()
        finally:
            await tor.aclose()
        return failed.value, time.monotonic() - t0, CHANNELS.of(tor)

    error, took, channels = run(main())
    assert "no directory authority or fallback has an address that ClientUseIPv4 and " in str(
        error
    ), error
    assert took < 10 and not channels, (took, channels)


@pytest.mark.options("EnforceDistinctSubnets", "TestingTorNetwork")
def test_enforce_distinct_subnets(testnet: TestNetwork, tmp_path: Path) -> None:
    """The dual-stack relays' IPv6 addresses share one /32 (each IPv4 address has its own
    /16): with EnforceDistinctSubnets 1 no circuit holds two of them."""
    info = testnet.info
    dual = set(need_dual_stack(info))
    variants = {
        "off": {"UseEntryGuards": 0},  # the default under TestingTorNetwork
        "on": {"UseEntryGuards": 0, "EnforceDistinctSubnets": 1},
        "public_rules": {"UseEntryGuards": 0, "TestingTorNetwork": 0},  # on by default
    }

    async def main() -> dict[str, list[list[str]]]:
        async with clients(info, tmp_path, variants) as tors:
            used = await asyncio.gather(*(isolated_circuits(tor, 30) for tor in tors.values()))
            return {n: [names(c) for c in cs] for n, cs in zip(tors, used, strict=True)}

    paths = run(main())
    shared = {name: [p for p in ps if len(dual.intersection(p)) > 1] for name, ps in paths.items()}
    print({name: len(ps) for name, ps in shared.items()}, "of 30 circuits with two dual-stack")
    assert shared["on"] == [] and shared["public_rules"] == [], shared
    # Off: a dual-stack guard (3 in 4 first hops) gets a dual-stack middle about half the time.
    assert shared["off"], paths["off"]


# --------------------------------------------------------------------------- a stalled exit


async def _claim_two_exits(
    tor: TorClient, exit1_only_port: int, stall: str | None
) -> tuple[IsolationToken, TunnelHandle, TunnelHandle]:
    """An isolation token with two circuits of its own, one through each exit: (token, the
    circuit its next port-80 stream goes on, the other). ``stall``: that first circuit's exit."""
    for i in range(40):
        token = IsolationToken(f"claim{i}")
        _, via_80 = await get_ip(tor, token)
        if exit_of(via_80) != "exit2":
            continue
        _, via_exit1 = await get_ip(tor, token, exit1_only_port)
        assert exit_of(via_exit1) == "exit1"
        _, winner = await get_ip(tor, token)
        if stall is None or exit_of(winner) == stall:
            return token, winner, via_exit1 if winner is via_80 else via_80
    raise AssertionError("could not give a token circuits through both exits")


async def _first_build_timeout(tor: TorClient, exit_name: str, limit: float) -> float | None:
    """Build a circuit ending at ``exit_name``: seconds until a build is given up on for
    taking too long (CircuitBuildTimeout), None if none is within ``limit``."""
    circmgr = tor._circmgr
    assert circmgr is not None
    relay = next(r for r in tor._dirmgr.require_netdir().relays if r.nickname == exit_name)
    before = circmgr.cbt.timeouts
    t0 = time.monotonic()
    build = asyncio.ensure_future(circmgr.build_internal_circuit(relay))
    try:
        while time.monotonic() - t0 < limit:
            if circmgr.cbt.timeouts > before:
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        return None
    finally:
        build.cancel()
        with contextlib.suppress(BaseException):
            await build


async def _quiet(tor: TorClient) -> None:
    """Until no circuit is being built (so no build through a relay predates its stall)."""
    assert tor._circmgr is not None
    deadline = time.monotonic() + 15
    while tor._circmgr.pending_builds() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def stalled_exit(testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SIGSTOP one exit (it keeps its connections but answers nothing) for ~20 s; meanwhile,
    clients that differ in their timeouts open a stream through it and build a circuit to it.
    SIGCONT it afterwards whatever happens, and wait until it serves again."""
    info = testnet.info
    exit1_only_port = info["targets"]["exit1_only"]["ports"][0]
    variants = {
        "stream_default": {},  # C tor's schedule: 10 s for the first attempts
        "stream_20": {"CircuitStreamTimeout": 20},
        "build_learned": {},  # LearnCircuitBuildTimeout 1
        "build_fixed_8": {"LearnCircuitBuildTimeout": 0, "CircuitBuildTimeout": 8},
        "build_unlearned": {"LearnCircuitBuildTimeout": 0},  # 60 s
        "build_initial_30": {"CircuitBuildTimeout": 30},  # learning on: 30 s until learned
    }
    builders = [name for name in variants if name.startswith("build_")]
    paused: list[str] = []

    workdir = tmp_path_factory.mktemp("stall")

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with clients(info, workdir, variants) as tors:
            # Enough builds to learn a build timeout, on every build client alike.
            await asyncio.gather(*(isolated_circuits(tors[n], 22) for n in builders))
            cbts = {n: tors[n]._circmgr.cbt for n in builders}  # type: ignore[union-attr]
            assert all(cbt.learned for cbt in cbts.values()), "nothing learned in 22 builds"
            out["learned_timeouts"] = {n: cbt.timeout() for n, cbt in cbts.items()}
            token_d, stall_d, other_d = await _claim_two_exits(
                tors["stream_default"], exit1_only_port, None
            )
            stalled = exit_of(stall_d)
            token_20, _, other_20 = await _claim_two_exits(
                tors["stream_20"], exit1_only_port, stalled
            )
            await asyncio.gather(*(_quiet(tor) for tor in tors.values()))

            async def moved(tor: TorClient, token: IsolationToken) -> tuple[float, str, Any]:
                t0 = time.monotonic()
                seen, circuit = await get_ip(tor, token)
                return time.monotonic() - t0, seen, circuit

            paused.append(stalled)
            testnet.pause_node(stalled)
            try:
                t_stall = time.monotonic()
                results = await asyncio.gather(
                    moved(tors["stream_default"], token_d),
                    moved(tors["stream_20"], token_20),
                    *(_first_build_timeout(tors[n], stalled, 15) for n in builders),
                )
                out["window"] = time.monotonic() - t_stall
            finally:
                testnet.resume_node(stalled)
            out.update(zip(["stream_default", "stream_20", *builders], results, strict=True))
            out["stalled"] = stalled
            out["others"] = {"stream_default": other_d, "stream_20": other_20}
            # The exit answers again (for the tests after these).
            out["recovered"] = await _wait_exit_serves(tors["stream_default"], stalled)
        return out

    try:
        out = run(main(), 240)
    finally:
        for name in paused:  # (SIGCONT again: harmless, and sure)
            with contextlib.suppress(Exception):
                testnet.resume_node(name)
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{out['stalled']} stopped {out['window']:.1f}s; streams moved after "
        f"{out['stream_default'][0]:.1f}s (default), {out['stream_20'][0]:.1f}s (20); "
        f"first build timeouts {[out[n] for n in builders]} (learned "
        f"{out['learned_timeouts']}); serving again after {out['recovered']:.1f}s"
    )
    return out


@pytest.mark.options("CircuitStreamTimeout")
def test_circuit_stream_timeout_moves_a_stream_off_a_silent_exit(
    stalled_exit: dict[str, Any], testnet: TestNetwork
) -> None:
    out = stalled_exit
    exit_address = {e["nickname"]: e["address"] for e in testnet.info["exits"]}
    other_exit = next(e for e in exit_address if e != out["stalled"])
    # The stream waits for the exit's answer on the stalled exit's circuit, then goes to its
    # other circuit: after 10 s by default (C tor's schedule), after CircuitStreamTimeout 20.
    for key, timeout in (("stream_default", 10.0), ("stream_20", 20.0)):
        took, seen, circuit = out[key]
        assert circuit is out["others"][key] and seen == exit_address[other_exit], key
        assert timeout - 0.2 <= took <= timeout + 4.0, (key, took)


@pytest.mark.options("CircuitBuildTimeout", "LearnCircuitBuildTimeout")
def test_build_timeouts_on_a_stalled_relay(stalled_exit: dict[str, Any]) -> None:
    out = stalled_exit
    learned = out["learned_timeouts"]["build_learned"]
    # LearnCircuitBuildTimeout 1 (the default): given up after the learned timeout, a few
    # seconds on this network (the floor is 2 s) ...
    assert learned < 8.0 and out["build_learned"] is not None
    assert learned - 0.2 <= out["build_learned"] <= learned + 4.0, out["build_learned"]
    # ... with learning off, after CircuitBuildTimeout (8) ...
    assert out["build_fixed_8"] is not None and 7.8 <= out["build_fixed_8"] <= 12.0
    # ... and, with no CircuitBuildTimeout either, not within the window (60 s).
    assert out["build_unlearned"] is None, out["build_unlearned"]


@pytest.mark.options("CircuitBuildTimeout", "LearnCircuitBuildTimeout")
def test_circuit_build_timeout_is_only_the_initial_value_while_learning(
    stalled_exit: dict[str, Any],
) -> None:
    out = stalled_exit
    learned = out["learned_timeouts"]["build_initial_30"]
    # As C tor: once a timeout is learned, it applies, not the configured initial 30 s.
    assert out["build_initial_30"] is not None, "still waiting for the initial 30 s"
    assert out["build_initial_30"] <= learned + 3.0


async def _wait_exit_serves(tor: TorClient, exit_name: str, limit: float = 45.0) -> float:
    """Seconds until a fresh stream goes through ``exit_name`` again."""
    t0 = time.monotonic()
    while True:
        got = await asyncio.gather(
            *(get_ip(tor, IsolationToken()) for _ in range(4)), return_exceptions=True
        )
        if any(isinstance(r, tuple) and exit_of(r[1]) == exit_name for r in got):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < limit, f"{exit_name} does not serve again: {got}"
        await asyncio.sleep(0.5)


# ------------------------------------------- the other doors: HTTPTunnelPort, DNSPort, automap


def _dig(daemon: PtClient, port: int, *args: str) -> list[str]:
    """The answer records' data of ``dig @127.0.0.1 -p PORT +short args``."""
    import subprocess

    from puretor.testnet import netns

    argv = ["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=60", *args]
    proc = subprocess.run(
        netns.wrap(daemon.netns, argv), capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


@pytest.mark.options(
    "AutomapHostsSuffixes",
    "AutomapHostsOnResolve",
    "VirtualAddrNetworkIPv4",
    "VirtualAddrNetworkIPv6",
    "DNSPort",
    "HTTPTunnelPort",
    "SocksPolicy",
)
def test_automap_suffixes_networks_and_socks_policy_on_the_other_doors(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    """AutomapHostsSuffixes .test automaps target.test (not only .onion); the virtual
    addresses come from VirtualAddrNetworkIPv4/IPv6, and a SOCKS connection to one reaches
    the name through an exit; SocksPolicy also shuts HTTPTunnelPort to a rejected address."""
    info = testnet.info
    lines = [
        "SocksPort 127.0.0.1:auto",
        "Log notice stdout",
        "DNSPort auto",
        "HTTPTunnelPort auto",
        "AutomapHostsOnResolve 1",
        "AutomapHostsSuffixes .test",
        "VirtualAddrNetworkIPv4 10.77.0.0/16",
        "VirtualAddrNetworkIPv6 [fc00::]/7",
        "SocksPolicy reject 127.0.0.2",
    ]
    daemon = start_daemon(info, tmp_path, lines, audit=False, wait=False)
    try:
        wait_listening(daemon)
        daemon.wait_bootstrapped(120)
        log = daemon.log_text()
        dns_port = int(re.search(r"Opened DNS listener .* on 127\.0\.0\.1:(\d+)", log).group(1))  # type: ignore[union-attr]
        http_port = int(
            re.search(r"Opened HTTP tunnel listener .* on 127\.0\.0\.1:(\d+)", log).group(1)
        )  # type: ignore[union-attr]
        v4 = _dig(daemon, dns_port, "target.test", "A")
        v6 = _dig(daemon, dns_port, "target.test", "AAAA")
        assert len(v4) == 1 and ipaddress.ip_address(v4[0]) in ipaddress.ip_network("10.77.0.0/16")
        assert len(v6) == 1 and ipaddress.ip_address(v6[0]) in ipaddress.ip_network("fc00::/7")
        # A name without the suffix is resolved by an exit as usual.
        assert _dig(daemon, dns_port, "tls.target.test.", "A") != v4
        seen = run(socks_get_ip(daemon.socks_port, v4[0]), 120)
        assert seen in info["targets"]["exit_addresses"], seen

        async def tunnel_from(source: str) -> bytes:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", http_port, local_addr=(source, 0)
            )
            try:
                writer.write(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return await asyncio.wait_for(reader.read(200), 10)
            except ConnectionError:
                return b""
            finally:
                writer.close()

        assert run(tunnel_from("127.0.0.1"), 20).startswith(b"HTTP/1.0 200 OK")
        assert run(tunnel_from("127.0.0.2"), 20) == b""
    finally:
        daemon.stop()
