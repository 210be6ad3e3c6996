"""Where the ``tor-client`` daemon's memory goes, scenario by scenario.

    python -m puretor.testnet up --dir /tmp/tn
    python bench/bench_memory.py --netdir /tmp/tn [--scenarios single,concurrent,conflux,idle]
                                 [--tracemalloc] [--top 12] [--json out.json] [--torrc-line L]

For each scenario a fresh ``tor-client`` is started on the private network (the benchmark's
torrc), bootstrapped, and then

  single      one 100 MiB download
  concurrent  20 x 10 MiB downloads at once on one circuit
  conflux     one 100 MiB download with ``ConfluxEnabled 1`` (a conflux set to the exit)
  idle        1,000 SOCKS connections CONNECTed to the HTTP target and left silent

and its peak RSS (VmHWM) is read, next to the floor: a Python that only imported asyncio,
ssl, cryptography and PyNaCl.  With ``--tracemalloc`` the daemon runs under `tracemalloc`
(which inflates its RSS, so those runs are reported apart) and the snapshot taken at the
peak of traced memory is summarized: the source lines that allocated the most.  tracemalloc
sees what Python's allocators hand out - not OpenSSL's or the Rust extension's own buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from puretor.bench import procstat  # noqa: E402
from puretor.bench.clients import PURETOR, BenchClient  # noqa: E402
from puretor.bench.socks import Credentials, fetch, fetch_many, socks_connect, split_url  # noqa: E402

SCENARIOS = ("single", "concurrent", "conflux", "idle")
IDLE_CONNECTIONS = 1000
# Python plus the libraries puretor builds on, and nothing of puretor's.
FLOOR_SCRIPT = """
import asyncio, ssl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import nacl.bindings
async def main(): await asyncio.sleep(0)
asyncio.run(main())
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def floor_mib() -> float:
    """Peak RSS of the bare interpreter with puretor's libraries loaded (median of 3)."""
    runs = sorted(
        int(
            subprocess.run(
                [sys.executable, "-c", FLOOR_SCRIPT], capture_output=True, text=True, check=True
            ).stdout
        )
        / 1024
        for _ in range(3)
    )
    return runs[1]


# -- the daemon under tracemalloc ------------------------------------------------------


def traced_daemon(out: str, args: list[str]) -> int:
    """Run tor-client with tracemalloc; at exit write the snapshot at the traced peak."""
    import tracemalloc

    tracemalloc.start(1)
    best: dict[str, Any] = {"traced": 0, "stats": [], "files": []}
    stop = threading.Event()
    ignore = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__))

    def sample() -> None:
        while not stop.wait(0.05):
            current, _peak = tracemalloc.get_traced_memory()
            if current > best["traced"] * 1.03 + 256 * 1024:
                snap = tracemalloc.take_snapshot().filter_traces(ignore)
                best["traced"] = current
                best["stats"] = [
                    (str(s.traceback[0]), s.size, s.count) for s in snap.statistics("lineno")[:40]
                ]
                best["files"] = [
                    (s.traceback[0].filename, s.size, s.count)
                    for s in snap.statistics("filename")[:20]
                ]
                del snap

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from puretor.cli import main as tor_client

    try:
        return tor_client(args)
    finally:
        stop.set()
        thread.join()
        Path(out).write_text(json.dumps(best))


class MemClient(BenchClient):
    """The benchmark's puretor client, with extra torrc lines and optionally tracemalloc."""

    def __init__(self, *a: Any, extra: list[str], traced: Path | None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.extra, self.traced = extra, traced

    def prepare(self, *, fresh: bool) -> None:
        super().prepare(fresh=fresh)
        torrc = self.workdir / "torrc"
        torrc.write_text(torrc.read_text() + "".join(line + "\n" for line in self.extra))

    def argv(self) -> list[str]:
        torrc = str(self.workdir / "torrc")
        if self.traced is None:
            return [sys.executable, "-m", "puretor.cli", "-f", torrc]
        return [sys.executable, __file__, "--traced-daemon", str(self.traced), "-f", torrc]


@dataclass
class Result:
    scenario: str
    idle_mib: float = 0.0  # VmRSS once bootstrapped, before the workload
    peak_mib: float = 0.0  # VmHWM after it
    mb_per_s: float = 0.0  # the workload's payload over its wall time (downloads)
    ok: bool = False
    note: str = ""
    traced: dict[str, Any] = field(default_factory=dict)


async def workload(name: str, c: BenchClient, info: dict[str, Any]) -> tuple[bool, str]:
    files = info["targets"]["files"]

    def url(size: str) -> str:
        return str(files[size]["urls"]["http_host"])

    if name in ("single", "conflux"):
        meta = files["100MiB"]
        res = await fetch(
            c.proxy,
            url("100MiB"),
            creds=Credentials("single"),
            expected_sha256=meta["sha256"],
            expected_size=meta["size"],
            timeout=600,
        )
        return res.ok, res.error
    if name == "concurrent":
        meta = files["10MiB"]
        results, _wall = await fetch_many(
            c.proxy,
            url("10MiB"),
            [Credentials("conc")] * 20,
            expected_sha256=meta["sha256"],
            expected_size=meta["size"],
            timeout=600,
        )
        bad = [r.error for r in results if not r.ok]
        return not bad, "; ".join(bad[:3])
    host, port, _ = split_url(info["targets"]["base_urls"]["http_host"] + "/")
    sem = asyncio.Semaphore(100)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open_one() -> None:
        async with sem:
            conns.append(await socks_connect(c.proxy, host, port, Credentials("idle")))

    try:
        await asyncio.gather(*(open_one() for _ in range(IDLE_CONNECTIONS)))
        await asyncio.sleep(1.0)
        return len(conns) == IDLE_CONNECTIONS, f"{len(conns)} connections open"
    finally:
        for _r, w in conns:
            w.close()


async def run_scenario(
    name: str, info: dict[str, Any], workdir: Path, args: Any, traced: bool
) -> Result:
    extra = list(args.torrc_line)
    if name == "conflux":
        extra.append("ConfluxEnabled 1")
    out = workdir / f"{name}.tracemalloc.json" if traced else None
    c = MemClient(PURETOR, workdir / name, info, extra=extra, traced=out)
    res = Result(name)
    procstat.raise_nofile(4 * IDLE_CONNECTIONS)
    await c.start(str(info["targets"]["files"]["1MiB"]["urls"]["http_host"]), fresh=True)
    try:
        await asyncio.sleep(1.0)
        res.idle_mib = procstat.rss_mib(c.pid)
        t0 = time.perf_counter()
        res.ok, res.note = await workload(name, c, info)
        if name != "idle":  # 100 MiB, or 20 x 10 MiB
            size = 200 if name == "concurrent" else 100
            res.mb_per_s = size * 2**20 / 1e6 / (time.perf_counter() - t0)
        res.peak_mib = procstat.peak_rss_mib(c.pid)
        if name == "conflux" and "conflux" not in c.log.read_text().lower():
            res.note += " (the log does not mention conflux)"
    finally:
        c.stop()
    if out is not None and out.exists():
        res.traced = json.loads(out.read_text())
    return res


def report(results: list[Result], floor: float, top: int) -> str:
    lines = [f"floor (Python + asyncio + ssl + cryptography + PyNaCl): {floor:.1f} MiB", ""]
    lines.append(
        f"{'scenario':12} {'idle RSS':>9} {'peak RSS':>9} {'over floor':>10} {'MB/s':>6}  ok"
    )
    for r in results:
        if r.traced:
            continue
        lines.append(
            f"{r.scenario:12} {r.idle_mib:8.1f}M {r.peak_mib:8.1f}M "
            f"{r.peak_mib - floor:9.1f}M {r.mb_per_s:6.1f}  {'yes' if r.ok else 'NO ' + r.note}"
        )
    for r in results:
        if not r.traced:
            continue
        lines += [
            "",
            f"[{r.scenario}] tracemalloc at the peak: "
            f"{r.traced['traced'] / 2**20:.1f} MiB traced ({'ok' if r.ok else r.note})",
        ]
        for where, size, count in r.traced["stats"][:top]:
            lines.append(f"  {size / 1024:9.0f} KiB {count:8d}  {_short(where)}")
    return "\n".join(lines)


def _short(where: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


async def amain(args: Any) -> int:
    from puretor.bench.cli import _compile_bytecode, attach

    info = attach(Path(args.netdir))
    _compile_bytecode()  # as pip install does: else each start compiles (and keeps ~1 MiB)
    floor = floor_mib()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for name in args.scenarios.split(","):
            if name not in SCENARIOS:
                print(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
                return 2
            results.append(await run_scenario(name, info, Path(tmp), args, traced=False))
            if args.tracemalloc:
                results.append(await run_scenario(name, info, Path(tmp), args, traced=True))
            peak = results[-1 - args.tracemalloc].peak_mib
            print(f"  {name}: peak {peak:.1f} MiB", flush=True)
    print(report(results, floor, args.top))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"floor_mib": floor, "results": [r.__dict__ for r in results]}, indent=1)
        )
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--traced-daemon"]:
        return traced_daemon(argv[1], argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--netdir", required=True, help="a network from python -m puretor.testnet up")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--tracemalloc", action="store_true", help="also run each under tracemalloc")
    p.add_argument("--top", type=int, default=12, help="allocation sites to show")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--torrc-line", action="append", default=[], help="an extra torrc line")
    args = p.parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130  # Ctrl-C: the clients are stopped on the way out


if __name__ == "__main__":
    sys.exit(main())
