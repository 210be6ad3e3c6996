"""The realistic network profile: a network of its own (18 relays behind the link emulator,
in a rootless namespace of its own, beside the session's loopback network), whose delays,
caps and listeners are what network.json says.

The main check: a fresh stream on a built circuit connects in one circuit round trip,
2 × (d_guard + d_middle + d_exit) from network.json, and an HTTP request on it is answered
one target round trip (2 × d_target) later; both within 20 %. (TCP handshakes are not
delayed by the emulator - see puretor.testnet.profiles - so the exit's connect to the target
adds nothing to the first.) Each circuit's figure is the fastest of its six fresh streams,
the path's latency without the CPU queueing a busy 2-core machine adds (which only ever adds
time); the medians are printed beside them. The network is stopped when this module ends,
pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from puretor.testnet import TestNetwork, missing_requirements, profiles
from puretor.testnet.network import _python_env

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(400)]

PROBE = Path(__file__).with_name("realistic_probe.py")
TOLERANCE = 0.20


@pytest.fixture(scope="module")
def realnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNetwork]:
    missing = missing_requirements(rootless=True)
    if missing:
        reason = "realistic network unavailable: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason} - CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    started = time.monotonic()
    # Module scope: its 22 processes are gone before the next module starts.
    net = TestNetwork.start(
        tmp_path_factory.mktemp("realnet"),
        rootless=True,
        plan=profiles.realistic_plan(),
        timeout=240.0,
    )
    try:
        print(f"\nrealistic network up in {time.monotonic() - started:.1f} s")
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def probe(realnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two circuits x six fresh streams each, measured by realistic_probe.py inside."""
    proc = realnet.run(
        [
            sys.executable,
            str(PROBE),
            str(realnet.workdir / "network.json"),
            str(tmp_path_factory.mktemp("probe") / "data"),
            "--circuits",
            "2",
            "--streams",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=_python_env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _relays(net: TestNetwork) -> dict[str, Any]:
    return {r["nickname"]: r for r in net.info["relays"]}


def test_network_json_records_the_profile(realnet: TestNetwork) -> None:
    info = realnet.info
    prof = info["network_profile"]
    plan = profiles.realistic_plan(profiles.DEFAULT_SEED)
    assert (prof["name"], prof["seed"]) == ("realistic", profiles.DEFAULT_SEED)
    assert prof["target_delay_ms"] == plan.target_delay_ms
    relays = _relays(realnet)
    assert len(relays) == 18
    for node in plan.nodes:
        if not node.is_relay:
            continue
        r = relays[node.nickname]
        # The same seed, the same delays: what the plan drew is what the network runs.
        assert r["one_way_delay_ms"] == node.delay_ms, node.nickname
        assert r["bandwidth_rate_kb"] == r["bandwidth_kb"] == node.rate_kb > 0
        assert r["listen_orport"] == 9101 and r["orport"] == 9001
    assert [n for n, r in relays.items() if r["fault"]] == ["slow1", "stall1"]
    assert relays["exit3"]["family"] == ["exit4"] and relays["guard4"]["family"] == ["middle3"]
    links = json.loads(Path(prof["links_config"] or "").read_text())["links"]
    assert {tuple(link["listen"]) for link in links} >= {
        (r["address"], 9001) for r in relays.values()
    } | {(r["ipv6_address"], 9001) for r in relays.values() if r["ipv6_address"]}


def test_relays_listen_only_privately_and_caps_are_the_weights(realnet: TestNetwork) -> None:
    """Every ORPort in the consensus (IPv6 `a` lines too) is the emulator's: tor itself opened
    only its NoAdvertise port; and the consensus weights are the bandwidth caps (but the
    authorities': C tor's authorities take no measurement of an authority, whose weight is then
    its own tiny unmeasured claim, so clients hardly ever route through them)."""
    relays = _relays(realnet)
    for name, r in relays.items():
        log = Path(r["log"]).read_text(errors="replace")
        opened = set(re.findall(r"Opened OR listener connection \(ready\) on (\S+)", log))
        want = {f"{r['address']}:9101"}
        if r["ipv6_address"]:
            want.add(f"[{r['ipv6_address']}]:9101")
        assert opened == want, (name, opened)
    auth = realnet.workdir / "nodes" / "auth1" / "cached-microdesc-consensus"
    text = auth.read_text()
    weights: dict[str, int] = {}
    unmeasured: set[str] = set()
    nickname = ""
    for line in text.splitlines():
        if line.startswith("r "):
            nickname = line.split()[1]
            assert line.split()[-2] == "9001", line
        elif line.startswith("a "):
            assert line.endswith("]:9001"), line
        elif line.startswith("w "):
            weights[nickname] = int(line.split("Bandwidth=")[1].split()[0])
            if "Unmeasured=1" in line:
                unmeasured.add(nickname)
    assert unmeasured == {n for n, r in relays.items() if r["role"] == "authority"}
    assert {n: w for n, w in weights.items() if n not in unmeasured} == {
        n: r["bandwidth_rate_kb"] for n, r in relays.items() if n not in unmeasured
    }


def test_stream_connect_takes_one_circuit_rtt(realnet: TestNetwork, probe: dict[str, Any]) -> None:
    relays = _relays(realnet)
    target = realnet.info["network_profile"]["target_delay_ms"]
    assert len(probe["circuits"]) == 2, probe
    lines = []
    for c in probe["circuits"]:
        assert c["same_circuit"], c
        rtt = profiles.circuit_rtt_ms([relays[n]["one_way_delay_ms"] for n in c["path"]])
        answer = rtt + 2 * target
        connect, first = c["connect_min_ms"], c["first_byte_min_ms"]
        lines.append(
            f"{'-'.join(c['path'])}: circuit RTT {rtt:.1f} ms, connect {connect:.1f} ms "
            f"({connect / rtt - 1:+.1%}; median {c['connect_median_ms']:.1f}); + target RTT "
            f"{answer:.1f} ms, first byte {first:.1f} ms ({first / answer - 1:+.1%}; median "
            f"{c['first_byte_median_ms']:.1f})"
        )
        assert abs(connect - rtt) <= TOLERANCE * rtt, lines[-1]
        assert abs(first - answer) <= TOLERANCE * answer, lines[-1]
    print("\n" + "\n".join(lines))


def test_targets_see_the_exits_and_the_emulator_counts_its_cpu(
    realnet: TestNetwork, probe: dict[str, Any]
) -> None:
    """The target link keeps the exit's address as the source (the targets log it), and the
    emulator's counters cover what went through it."""
    from puretor.testnet.targets import read_source_log

    exits = set(realnet.info["targets"]["exit_addresses"])
    sources = [
        s
        for s in read_source_log(realnet.info["targets"]["source_log"])
        if not s.listener.startswith("onion")
    ]
    assert sources and {s.ip for s in sources} <= exits, {s.ip for s in sources}
    deadline = time.monotonic() + 15
    while True:  # rewritten every 5 s
        stats = realnet.link_stats()
        if stats and stats["links"]["target:80"]["connections"] >= 14:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.5)
    assert stats["cpu_seconds"] > 0
    assert sum(v["bytes"] for v in stats["links"].values()) > 100_000
    alive = subprocess.run(
        [sys.executable, "-m", "puretor.testnet", "status", "--dir", str(realnet.workdir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_python_env(),
    )
    assert "network profile: realistic (seed 1)" in alive.stdout, alive.stdout
    assert re.search(r"stall1 .* STALLS after 20 s", alive.stdout), alive.stdout
    assert re.search(r"link emulator: 27 links", alive.stdout), alive.stdout
