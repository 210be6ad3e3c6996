"""The channel scheduler's policy on a private network: EWMA (C tor's) against FIFO.

Run:  python bench/bench_mux.py NETDIR [--rounds 3] [--mb 64]
      (NETDIR: a running `puretor-testnet up --dir NETDIR`; run inside its namespace,
      e.g. ``puretor-testnet exec --dir NETDIR python bench/bench_mux.py NETDIR``)

The client schedules only what it sends, so the scenarios are uploads:

* "1 upload": one ``--mb`` MiB POST, MB/s;
* "4 uploads": four concurrent POSTs of ``--mb``/4 MiB each on four isolated circuits
  (they share guard channels: the scheduler decides whose cells go first), MB/s of all;
* "TTFB under upload": a small GET on a warm circuit every 100 ms while one upload runs,
  median milliseconds.

EWMA is `CircuitMux` with the consensus half-life (30 s); FIFO is the same scheduler with
the half-life 0 (round robin, what C tor did before EWMA; no torrc value selects it, as C
tor no longer has it, so this script sets it on the channel manager).  The two alternate
round by round; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from puretor import IsolationToken, TorClient, TorConfig  # noqa: E402

MiB = 1 << 20


def _config(info: dict[str, Any], data_dir: Path) -> TorConfig:
    return TorConfig.from_options(
        DataDirectory=str(data_dir),
        TestingTorNetwork=True,
        UseDefaultFallbackDirs=False,
        DirAuthority=[line.removeprefix("DirAuthority ") for line in info["dir_authority_lines"]],
        SocksPort=0,
    )


async def _upload(tor: TorClient, host: str, size: int, token: IsolationToken) -> float:
    """Seconds to POST ``size`` bytes (checked by the target's sha256 answer)."""
    body = b"u" * size
    reader, writer = await tor.open_connection(host, 80, isolation=token)
    t0 = time.perf_counter()
    head = f"POST /upload HTTP/1.0\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n"
    writer.write(head.encode() + body)
    answer = await reader.read()
    spent = time.perf_counter() - t0
    writer.close()
    if hashlib.sha256(body).hexdigest().encode() not in answer:
        raise RuntimeError(f"upload not confirmed: {answer[-200:]!r}")
    return spent


async def _ttfb(tor: TorClient, host: str, token: IsolationToken) -> float:
    t0 = time.perf_counter()
    reader, writer = await tor.open_connection(host, 80, isolation=token)
    writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await reader.readexactly(1)
    spent = time.perf_counter() - t0
    await reader.read()
    writer.close()
    return spent


async def _round(tor: TorClient, host: str, size: int) -> dict[str, float]:
    one = await _upload(tor, host, size, IsolationToken())
    part = size // 4
    t0 = time.perf_counter()
    await asyncio.gather(*(_upload(tor, host, part, IsolationToken()) for _ in range(4)))
    four = time.perf_counter() - t0
    warm = IsolationToken()
    await _ttfb(tor, host, warm)  # build the warm circuit
    bulk = asyncio.ensure_future(_upload(tor, host, size, IsolationToken()))
    await asyncio.sleep(0.5)  # the upload is flowing
    samples = []
    while not bulk.done():
        samples.append(await _ttfb(tor, host, warm))
        await asyncio.sleep(0.1)
    await bulk
    return {
        "1 upload MB/s": size / one / 1e6,
        "4 uploads MB/s": 4 * part / four / 1e6,
        "TTFB under upload ms": 1000 * statistics.median(samples) if samples else float("nan"),
    }


async def main(netdir: Path, rounds: int, mb: int, workdir: Path) -> None:
    info = json.loads((netdir / "network.json").read_text())
    host = "target.test"
    results: dict[str, dict[str, list[float]]] = {"EWMA": {}, "FIFO": {}}
    async with TorClient(_config(info, workdir), bootstrap_timeout=120) as tor:
        await asyncio.sleep(3)  # preemptive circuits
        for r in range(rounds):
            for policy in ("EWMA", "FIFO") if r % 2 == 0 else ("FIFO", "EWMA"):
                halflife = 30.0 if policy == "EWMA" else 0.0
                tor._chanmgr.priority_halflife = lambda h=halflife: h
                for channel in tor._chanmgr._channels.values():
                    channel.mux.set_halflife(halflife)
                got = await _round(tor, host, mb * MiB)
                for key, value in got.items():
                    results[policy].setdefault(key, []).append(value)
                print(
                    f"round {r + 1} {policy}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items())
                )
    print()
    for key in results["EWMA"]:
        e, f = statistics.median(results["EWMA"][key]), statistics.median(results["FIFO"][key])
        print(f"{key:<24} EWMA {e:8.1f}   FIFO {f:8.1f}   EWMA/FIFO {e / f:.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("netdir", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-mux-data"))
    args = ap.parse_args()
    # Ctrl-C ends the benchmark at once: its clients live in this process and hold
    # nothing that must be saved (asyncio's own handler cancels the main task, which a
    # round in progress may outlast).
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    asyncio.run(main(args.netdir, args.rounds, args.mb, args.workdir))
