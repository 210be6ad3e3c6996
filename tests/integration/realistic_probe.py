"""Measure a realistic-profile network's delays through puretor's library; prints JSON.

    python realistic_probe.py NETWORK_JSON DATA_DIR [--circuits N] [--streams N]

Run inside the network's namespace (``TestNetwork.run``). For each of N circuits (a fresh
isolation token each; one without the stalling relay): a first stream builds the circuit,
then N fresh streams on that very circuit are timed, one after another - ``connect``: from asking for the stream
to CONNECTED (the exit's BEGIN/CONNECTED round trip), and ``first_byte``: from sending an
HTTP request on it to the first byte of the answer. Conflux is off, so a stream's cells take
the one path that `path` names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from puretor import IsolationToken, TorClient, TorConfig


def config(info: dict[str, Any], data_dir: Path) -> TorConfig:
    return TorConfig.from_options(
        DataDirectory=data_dir,
        TestingTorNetwork=True,
        UseDefaultFallbackDirs=False,
        SocksPort=0,
        ConfluxEnabled=False,
        DirAuthority=[line.removeprefix("DirAuthority ") for line in info["dir_authority_lines"]],
    )


async def timed_stream(tor: TorClient, ip: str, token: IsolationToken) -> dict[str, Any]:
    t0 = time.monotonic()
    reader, writer = await tor.open_connection(ip, 80, isolation=token)
    t1 = time.monotonic()
    writer.write(b"GET /ip HTTP/1.1\r\nHost: target.test\r\n\r\n")
    await reader.read(1)
    t2 = time.monotonic()
    circuit = writer.get_extra_info("circuit")
    writer.close()
    return {
        "connect_ms": (t1 - t0) * 1000,
        "first_byte_ms": (t2 - t1) * 1000,
        "circuit": id(circuit),
        "path": [hop.target.nickname for hop in circuit.path],
    }


async def probe(info: dict[str, Any], data_dir: Path, circuits: int, streams: int) -> Any:
    ip = info["targets"]["ip"]
    avoid = {r["nickname"] for r in info["relays"] if r.get("fault") == "stall"}
    out: dict[str, Any] = {"circuits": [], "skipped_paths": []}
    t0 = time.monotonic()
    async with TorClient(config(info, data_dir)) as tor:
        await tor.bootstrap(timeout=120)
        out["bootstrap_s"] = time.monotonic() - t0
        tries = 0
        while len(out["circuits"]) < circuits and tries < 4 * circuits:
            tries += 1
            token = IsolationToken()
            try:
                first = await asyncio.wait_for(timed_stream(tor, ip, token), 60)
            except Exception as exc:  # e.g. a circuit through the stalling relay
                out["skipped_paths"].append(f"{type(exc).__name__}: {exc}")
                continue
            if avoid & set(first["path"]):
                out["skipped_paths"].append(first["path"])
                continue
            samples = [await asyncio.wait_for(timed_stream(tor, ip, token), 30)]
            while len(samples) < streams:
                samples.append(await asyncio.wait_for(timed_stream(tor, ip, token), 30))
            same = all(s["circuit"] == first["circuit"] for s in samples)
            out["circuits"].append(
                {
                    "path": first["path"],
                    "same_circuit": same,
                    "first_stream_ms": first["connect_ms"],
                    "connect_ms": [round(s["connect_ms"], 1) for s in samples],
                    "first_byte_ms": [round(s["first_byte_ms"], 1) for s in samples],
                    "connect_median_ms": statistics.median(s["connect_ms"] for s in samples),
                    "first_byte_median_ms": statistics.median(s["first_byte_ms"] for s in samples),
                    "connect_min_ms": min(s["connect_ms"] for s in samples),
                    "first_byte_min_ms": min(s["first_byte_ms"] for s in samples),
                }
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("network_json", type=Path)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--circuits", type=int, default=2)
    ap.add_argument("--streams", type=int, default=6)
    args = ap.parse_args()
    info = json.loads(args.network_json.read_text())
    args.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = asyncio.run(probe(info, args.data_dir, args.circuits, args.streams))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
