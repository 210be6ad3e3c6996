"""Acceptance: directory bootstrap against the private network's real C tor authorities.

An in-process `TorClient` (configured through the torrc parser, as ``tor-client`` is) cold-starts
from the configured authorities, restarts warm from its cache, and meets refused documents: a
consensus altered by one byte in the cache, and authorities whose configured v3ident is wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import puretor.aio.dirmgr as dirmgr_mod
from puretor.client import TorClient
from puretor.config import TorConfig, load_config
from puretor.dir.authorities import parse_dir_authority_line
from puretor.dir.cache import CERTS_FILE, CONSENSUS_FILE, MICRODESCS_FILE
from puretor.dir.netdir import NetDir
from puretor.dir.state import BootstrapStatus, DirState
from puretor.dir.verify import check_signatures
from puretor.testnet import NetworkInfo, TestNetwork

pytestmark = pytest.mark.testnet

BOOTSTRAP_RE = re.compile(r"^Bootstrapped (\d+)% \((\w+)\): (.+)$")


def write_config(
    info: NetworkInfo, workdir: Path, auth_lines: list[str] | None = None
) -> TorConfig:
    """A torrc for the private network, parsed by puretor's own torrc parser."""
    workdir.mkdir(parents=True, exist_ok=True)
    torrc = workdir / "torrc"
    lines = auth_lines if auth_lines is not None else info["dir_authority_lines"]
    torrc.write_text(
        "\n".join(
            [
                "TestingTorNetwork 1",
                f"DataDirectory {workdir / 'data'}",
                "UseDefaultFallbackDirs 0",
                "SocksPort 0",
                *lines,
            ]
        )
        + "\n"
    )
    return load_config(["-f", str(torrc)])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, name_prefix: str = "puretor") -> list[str]:
        return [r.getMessage() for r in self.records if r.name.startswith(name_prefix)]


@dataclass
class Run:
    """What one bootstrap did."""

    statuses: list[BootstrapStatus] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    fetches_at_done: int | None = None  # fetch_raw calls when 100% was reported
    requests_at_done: int | None = None  # DirManager.requests_made then
    netdir: NetDir | None = None
    state: DirState | None = None
    cache_problems: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    error: BaseException | None = None
    survived_aclose: bool = False  # the bootstrap task still ran 5 s after aclose()


def bootstrap(
    config: TorConfig,
    *,
    timeout: float = 90.0,
    expect_failure: bool = False,
    until: Callable[[list[str]], bool] | None = None,
) -> Run:
    """Bootstrap a TorClient in-process; collect progress, logs and fetch counts; close it.

    With ``expect_failure``, a bootstrap that has not finished after ``timeout`` (or once
    ``until(log messages)`` holds) is stopped and recorded in ``Run.error``."""
    run = Run()
    handler = _Records()
    logger = logging.getLogger("puretor")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    fetches = 0
    real_fetch_raw = dirmgr_mod.fetch_raw

    async def counting_fetch_raw(*args: Any, **kwargs: Any) -> bytes:
        nonlocal fetches
        fetches += 1
        return await real_fetch_raw(*args, **kwargs)

    async def main() -> None:
        tor = TorClient(config)

        def on_status(st: BootstrapStatus) -> None:
            run.statuses.append(st)
            if st.percent == 100:
                run.fetches_at_done = fetches
                run.requests_at_done = tor._dirmgr.requests_made

        tor.add_bootstrap_listener(on_status)
        t0 = time.monotonic()
        try:
            task = asyncio.ensure_future(tor.bootstrap())
            deadline = time.monotonic() + timeout
            while not task.done() and time.monotonic() < deadline:
                if until is not None and until(handler.messages()):
                    break
                await asyncio.wait({task}, timeout=0.1)
            if not task.done():
                task.cancel()
                raise TimeoutError(f"bootstrap stopped after {time.monotonic() - t0:.1f}s")
            task.result()
            run.elapsed = time.monotonic() - t0
            state = tor._dirmgr.state
            assert state is not None
            run.state = state
            run.netdir = state.netdir(time.time())
        except (TimeoutError, Exception) as exc:
            if not expect_failure:
                raise
            run.error = exc
        finally:
            run.cache_problems = list(tor._dirmgr.cache.problems)
            await tor.aclose()
            # aclose() must stop the bootstrap task; if it does not, say so (instead of
            # hanging in asyncio.run's shutdown) and stop it by force.
            task = tor._bootstrap_task
            if task is not None and not task.done():
                await asyncio.wait({task}, timeout=5)
                if not task.done():
                    run.survived_aclose = True
                    for _ in range(50):
                        task.cancel()
                        await asyncio.wait({task}, timeout=0.2)
                        if task.done():
                            break

    dirmgr_mod.fetch_raw = counting_fetch_raw  # type: ignore[assignment]
    try:
        asyncio.run(main())
    finally:
        dirmgr_mod.fetch_raw = real_fetch_raw
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        run.log = handler.messages()
    return run


def signed_by(consensus_file: Path, auths: list[Any]) -> list[str]:
    """The names of the trusted authorities whose signature is on this consensus (all three
    unless one was late for the vote on a busy machine: two of three suffice)."""
    names = {a.v3ident.hex().upper(): a.nickname for a in auths}
    idents = re.findall(
        r"^directory-signature (?:\S+ )?([0-9A-F]{40}) ", consensus_file.read_text(), re.M
    )
    return sorted(names[i] for i in idents if i in names)


def bootstrap_lines(run: Run) -> list[tuple[int, str]]:
    out = []
    for msg in run.log:
        m = BOOTSTRAP_RE.match(msg)
        if m:
            out.append((int(m.group(1)), m.group(2)))
    return out


def check_netdir(netdir: NetDir | None, info: NetworkInfo) -> None:
    """Every relay of the network, with a microdescriptor and the flags network.json expects."""
    assert netdir is not None
    by_fp = {r.fingerprint: r for r in netdir.relays}
    assert set(by_fp) == {n["fingerprint"] for n in info["relays"]}
    for node in info["relays"]:
        relay = by_fp[node["fingerprint"] or ""]
        assert relay.nickname == node["nickname"]
        assert (relay.address, relay.or_port) == (node["address"], node["orport"])
        assert relay.has_md, f"{node['nickname']} has no microdescriptor"
        assert set(node["expected_flags"]) <= relay.flags, (node["nickname"], relay.flags)


@pytest.fixture(scope="module")
def cold(testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    workdir = tmp_path_factory.mktemp("dir-cold")
    config = write_config(testnet.info, workdir)
    assert not (workdir / "data").exists()
    return bootstrap(config), workdir / "data"


def warm_copy(cold_dir: Path, tmp_path: Path) -> Path:
    """A copy of the cold start's DataDirectory (tests must not share state)."""
    workdir = tmp_path / "client"
    shutil.copytree(cold_dir, workdir / "data")
    return workdir


# --------------------------------------------------------------------------- cold / warm


def test_cold_start_reaches_100_percent_in_order(
    cold: tuple[Run, Path], testnet: TestNetwork
) -> None:
    run, data_dir = cold
    lines = bootstrap_lines(run)
    percents = [p for p, _ in lines]
    assert percents, run.log
    assert percents == sorted(set(percents)), f"not strictly increasing: {lines}"
    assert percents[-1] == 100 and lines[-1][1] == "done"
    tags = {tag for _, tag in lines}
    # Directory phases, then the circuit phases, as C tor names them.
    for tag in ("requesting_status", "loading_descriptors", "enough_dirinfo", "done"):
        assert tag in tags, lines
    # The listener saw exactly what was logged.
    assert [(s.percent, s.tag) for s in run.statuses] == lines
    assert run.requests_at_done and run.requests_at_done >= 2  # a consensus, certs, microdescs
    assert run.fetches_at_done == run.requests_at_done
    check_netdir(run.netdir, testnet.info)
    # The consensus is verified by all three authorities.
    state = run.state
    assert state is not None and state.consensus is not None
    auths = [
        parse_dir_authority_line(line.split(None, 1)[1])
        for line in testnet.info["dir_authority_lines"]
    ]
    status = check_signatures(state.consensus, state.certs, auths, time.time())
    # Every authority that signed (all three, unless one was late for this period's vote on
    # a busy machine: two suffice) has a valid signature.
    assert status.ok and not status.bad and not status.missing, status
    assert len(status.good) == len(signed_by(data_dir / CONSENSUS_FILE, auths)), status
    assert not state.missing_microdescs()
    # And it is all on disk.
    for name in (CONSENSUS_FILE, CERTS_FILE, MICRODESCS_FILE, "state.json"):
        assert (data_dir / name).stat().st_size > 0, name
    assert data_dir.stat().st_mode & 0o077 == 0


@pytest.mark.options("DataDirectory")
def test_warm_restart_makes_no_directory_fetch(
    cold: tuple[Run, Path], testnet: TestNetwork, tmp_path: Path
) -> None:
    workdir = warm_copy(cold[1], tmp_path)
    run = bootstrap(write_config(testnet.info, workdir))
    assert run.requests_at_done == 0, run.log
    assert run.fetches_at_done == 0, run.log  # no BEGIN_DIR request at all
    assert not run.cache_problems
    assert bootstrap_lines(run)[-1] == (100, "done")
    assert any("from the directory cache" in m for m in run.log)
    check_netdir(run.netdir, testnet.info)
    # The circuit build times the cold run recorded come back (a learned timeout, once
    # there are enough of them, instead of the initial 60 s).
    saved = json.loads((cold[1] / "circuit-build-times.json").read_text())
    assert saved["build_times_ms"], saved
    loaded = [m for m in run.log if m.startswith("Loaded ") and "circuit build times" in m]
    assert loaded == [
        f"Loaded {len(saved['build_times_ms'])} circuit build times: build timeout 60.0 s "
        "(not learned yet)."
    ] or (loaded and "not learned" not in loaded[0]), run.log


# --------------------------------------------------------------------------- refusals


def _alter_one_byte(data: bytes) -> bytes:
    """Change one digit inside the signed part (a `w Bandwidth=` value), keeping it parseable."""
    m = re.search(rb"\nw Bandwidth=(\d)", data)
    assert m is not None
    i = m.start(1)
    assert i < data.index(b"directory-signature")
    new_digit = b"7" if data[i : i + 1] != b"7" else b"3"
    return data[:i] + new_digit + data[i + 1 :]


def test_consensus_altered_by_one_byte_is_refused_by_dirstate(
    cold: tuple[Run, Path], testnet: TestNetwork
) -> None:
    data_dir = cold[1]
    auths = [
        parse_dir_authority_line(line.split(None, 1)[1])
        for line in testnet.info["dir_authority_lines"]
    ]
    raw = (data_dir / CONSENSUS_FILE).read_bytes()
    certs = (data_dir / CERTS_FILE).read_bytes()
    now = time.time()
    state = DirState(auths)
    state.add_certs(certs, now)
    with pytest.raises(Exception) as err:
        state.add_consensus(_alter_one_byte(raw), now)
    message = str(err.value)
    assert "insufficiently signed" in message, message
    bad = re.search(r"bad signature: ([\w, ]+)", message)
    signers = signed_by(data_dir / CONSENSUS_FILE, auths)
    assert bad is not None and sorted(bad.group(1).split(", ")) == signers, message
    assert state.consensus is None
    # The genuine document from the same source is still accepted afterwards.
    assert state.add_consensus(raw, now) is True
    assert state.consensus is not None


def test_tampered_cached_consensus_is_refused_and_fetched_again(
    cold: tuple[Run, Path], testnet: TestNetwork, tmp_path: Path
) -> None:
    workdir = warm_copy(cold[1], tmp_path)
    path = workdir / "data" / CONSENSUS_FILE
    tampered = _alter_one_byte(path.read_bytes())
    path.write_bytes(tampered)
    run = bootstrap(write_config(testnet.info, workdir))
    problems = " | ".join(run.cache_problems)
    assert "not using" in problems and CONSENSUS_FILE in problems, problems
    assert "bad signature" in problems, problems
    assert any("Ignoring part of the directory cache" in m for m in run.log)
    # ... and another source (an authority) was asked instead.
    assert run.requests_at_done and run.requests_at_done >= 1
    assert bootstrap_lines(run)[-1] == (100, "done")
    check_netdir(run.netdir, testnet.info)
    assert path.read_bytes() != tampered  # the verified replacement was cached


def _auth_lines_with_wrong_v3ident(info: NetworkInfo, names: set[str]) -> list[str]:
    out = []
    for auth, line in zip(info["authorities"], info["dir_authority_lines"], strict=True):
        if auth["nickname"] in names:
            fake = bytes(b ^ 0x5A for b in bytes.fromhex(auth["v3ident"])).hex().upper()
            line = line.replace(f"v3ident={auth['v3ident']}", f"v3ident={fake}")
            assert fake in line
        out.append(line)
    return out


@pytest.mark.options("DirAuthority")
def test_one_wrong_v3ident_still_bootstraps_on_the_majority(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    """dir-spec: more than half of the configured authorities must sign.  With auth1's key
    unknown, auth2 + auth3 (2 of 3) still suffice, and auth1's signature is not counted."""
    info = testnet.info
    lines = _auth_lines_with_wrong_v3ident(info, {"auth1"})
    run = bootstrap(write_config(info, tmp_path, lines))
    assert bootstrap_lines(run)[-1] == (100, "done")
    state = run.state
    assert state is not None and state.consensus is not None
    auths = [parse_dir_authority_line(line.split(None, 1)[1]) for line in lines]
    status = check_signatures(state.consensus, state.certs, auths, time.time())
    names = {a.v3ident: a.nickname for a in auths}
    assert sorted(names[i] for i in status.good) == ["auth2", "auth3"]  # 2 of 3 needed
    assert [names[i] for i in status.unsigned] == ["auth1"]


def _consensus_sources(run: Run) -> list[tuple[str, str]]:
    return _failures_in(run.log)


def _sources_in(log: list[str]) -> set[str]:
    return {src for src, _ in _failures_in(log)}


def _failures_in(log: list[str]) -> list[tuple[str, str]]:
    """(source nickname, error) of every failed consensus request, in order."""
    out = []
    for m in log:
        hit = re.match(r"Directory request for consensus from (\w+) .* failed: (.*)$", m)
        if hit:
            out.append((hit.group(1), hit.group(2)))
    return out


def test_two_wrong_v3idents_authorities_refuse_to_serve(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    """With the keys of auth2 and auth3 replaced, the consensus URL names authorities that did
    not sign: C tor authorities answer 404 (dir-spec §4.4 "fingerprints"), and every source is
    tried in turn; bootstrap never gets past requesting the consensus."""
    info = testnet.info
    lines = _auth_lines_with_wrong_v3ident(info, {"auth2", "auth3"})
    run = bootstrap(
        write_config(info, tmp_path, lines),
        timeout=20,
        expect_failure=True,
        until=lambda log: len(_sources_in(log)) >= 3,
    )
    assert run.error is not None, "bootstrap must not succeed"
    assert not run.survived_aclose, "TorClient.aclose() did not stop the bootstrap task"
    assert max((s.percent for s in run.statuses), default=0) <= 25, run.statuses
    failures = _consensus_sources(run)
    assert failures, run.log
    assert all("HTTP 404" in err for _, err in failures), failures
    assert {src for src, _ in failures} == {"auth1", "auth2", "auth3"}, failures


@pytest.mark.options("DirAuthority")
def test_two_wrong_v3idents_client_refuses_the_consensus(
    testnet: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, but asking without the fingerprint filter (as a cache that ignores it would
    answer): the authorities serve the consensus, and puretor itself refuses it - only 1 of the
    2 needed signatures can verify - with a clear error, then tries another source."""
    monkeypatch.setattr(
        DirState, "consensus_path", lambda self: "/tor/status-vote/current/consensus-microdesc"
    )
    info = testnet.info
    lines = _auth_lines_with_wrong_v3ident(info, {"auth2", "auth3"})
    run = bootstrap(
        write_config(info, tmp_path, lines),
        timeout=20,
        expect_failure=True,
        until=lambda log: len(_sources_in(log)) >= 2,
    )
    assert run.error is not None, "bootstrap must not succeed"
    assert not run.survived_aclose, "TorClient.aclose() did not stop the bootstrap task"
    assert max((s.percent for s in run.statuses), default=0) < 45, run.statuses
    refused = [m for m in run.log if m.startswith("Refused a consensus")]
    assert refused, run.log
    assert "insufficiently signed" in refused[0] and "of 2 needed" in refused[0], refused[0]
    unsigned = re.search(r"not signed by: ([\w, ]+)", refused[0])
    assert unsigned is not None and sorted(unsigned.group(1).split(", ")) == ["auth2", "auth3"]
    failures = _consensus_sources(run)
    assert all("insufficiently signed" in err for _, err in failures), failures
    assert len({src for src, _ in failures}) >= 2, failures
