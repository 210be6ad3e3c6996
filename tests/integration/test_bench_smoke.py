"""`python -m puretor.bench --quick` against the session's private network.

The benchmark runs as a subprocess of this (sealed) process, so it shares the namespace the
`testnet` fixture started the network in, and uses it through --netdir.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from puretor.bench.clients import KINDS, PURETOR
from puretor.bench.report import ONION_ROWS, ROW_IDS, TARGETS
from puretor.bench.socks import Credentials, fetch
from puretor.testnet import CTorClient, TestNetwork


def _ctor_missed_descriptor(cell: dict[str, object]) -> bool:
    failures = cell.get("failures") or []
    return cell["status"] == "fail" and all("SOCKS 0xf0" in str(f) for f in failures)  # type: ignore[union-attr]


def test_bench_quick_smoke(testnet: TestNetwork, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "puretor.bench",
            "--quick",
            "--netdir",
            str(testnet.workdir),
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), f"no JSON written (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    doc = json.loads(out.read_text())

    assert doc["hash_failures"] == []
    assert set(doc["rows"]) == set(ROW_IDS)
    for row_id in ROW_IDS:
        row = doc["rows"][row_id]
        for kind in KINDS:
            cell = row[kind]
            allowed = {"ok", "n/a"} if (kind == PURETOR and row_id in ONION_ROWS) else {"ok"}
            if kind != PURETOR and row_id in ONION_ROWS and _ctor_missed_descriptor(cell):
                # C tor's own client sometimes finds no descriptor for a few seconds while
                # the test network's onion services move to a new time period (SOCKS
                # 0xF0); that is the reference client's problem, not the benchmark's.
                continue
            assert cell["status"] in allowed, f"{row_id} [{kind}]: {cell}"
            if cell["status"] == "ok":
                assert cell["samples"] and cell["median"] >= 0, f"{row_id} [{kind}]"
    # (Only C tor's missing-descriptor onion failures are tolerated, as above.)
    failures = [f for f in doc["failures"] if not ("[C tor]" in f and "SOCKS 0xf0" in f)]
    assert failures == [], failures
    assert proc.returncode == 0 or len(failures) < len(doc["failures"]), proc.stderr[-4000:]
    # The fairness scenario ran for both: page fetches idle, under a download and under an
    # upload that the target received intact.
    for kind in KINDS:
        fair = doc["runs"][0][kind]["fairness"]
        assert fair["download"]["ok"] and fair["upload"]["ok"], fair
        assert fair["idle_ttfb"] and fair["download_ttfb"] and fair["upload_ttfb"], fair
    assert {t["row"] for t in doc["targets"]} == {t.row for t in TARGETS}
    assert all(t["result"] in ("PASS", "MISS", "n/a") for t in doc["targets"])
    assert doc["micro"]["cell_pipeline"]["outbound"]["mb_per_s"] > 0
    assert doc["micro"]["openssl"]["aes_128_ctr"]["mb_per_s"] > 0
    # The printed table: every target has a verdict line.
    for t in TARGETS:
        assert t.name in proc.stdout
    # --quick is meant to stay well under a minute; allow slack for a loaded CI machine.
    assert doc["meta"]["seconds"]["benchmark"] < 120, doc["meta"]["seconds"]


def test_bench_fetch_rejects_wrong_hash(testnet: TestNetwork, ctor_client: CTorClient) -> None:
    """A body whose SHA-256 does not match is a failure, never a figure."""
    meta = testnet.info["targets"]["files"]["1MiB"]
    host, port = ctor_client.socks_address.split(":")

    async def go(sha: str) -> tuple[bool, bool, int]:
        res = await fetch(
            (host, int(port)),
            meta["urls"]["http_host"],
            creds=Credentials("bench-hash-test"),
            expected_sha256=sha,
            expected_size=meta["size"],
            timeout=120,
        )
        return res.ok, res.hash_mismatch, res.size

    good = asyncio.run(go(meta["sha256"]))
    if not good[0]:  # the session's C tor client may still be settling: once more
        good = asyncio.run(go(meta["sha256"]))
    assert good == (True, False, meta["size"])
    assert asyncio.run(go("0" * 64)) == (False, True, meta["size"])
