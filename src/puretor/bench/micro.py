"""Microbenchmarks: puretor's relay-cell pipeline on one core, next to OpenSSL's own speed.

The cell pipeline comes from the checkout's ``bench/bench_cells.py`` (the real Channel/Tunnel/
Stream objects against the fake relay of ``tests/fakes``): ``bench_outbound`` (Stream.write ->
cells sealed when the channel's scheduler asks, framed) and ``bench_inbound`` (receive_data of
16 KiB records -> events -> sink). When that
file is not there (an installed wheel), a smaller stand-in times the relay crypto alone
(`OnionCrypto` sealing and peeling 3 layers), labelled as such.

The physical limit of this machine is ``openssl speed -evp aes-128-ctr`` and ``openssl speed
sha1`` over 509-byte blocks (a relay cell body); a 3-hop cell needs 3 AES layers and one SHA-1,
hence the "3-hop ceiling" = 498/509 / (3/AES + 1/SHA1) in payload MB/s.

Run on its own (prints JSON): ``python -m puretor.bench.micro [--mb 20] [--repeat 3]``.
It runs in a subprocess of the benchmark, so bench_cells' sys.path changes stay there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MB = 1_000_000
CELL_DATA = 498
BODY = 509


def bench_cells_path() -> Path | None:
    import puretor

    root = Path(puretor.__file__).resolve().parents[2]  # src/puretor -> checkout
    path = root / "bench" / "bench_cells.py"
    return path if path.exists() and (root / "tests" / "fakes").is_dir() else None


def _pipeline_bench_cells(path: Path, total: int, repeat: int) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("_puretor_bench_cells", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out: dict[str, Any] = {"source": str(path), "payload_mb": total / MB}
    for direction, fn in (("outbound", mod.bench_outbound), ("inbound", mod.bench_inbound)):
        best = min(fn(total)[0] for _ in range(repeat))
        out[direction] = {
            "mb_per_s": total / best / MB,
            "us_per_cell": best * 1e6 / (total / CELL_DATA),
            "what": (
                "Stream.write -> Channel.data_to_send: sealed, framed cells (+ SENDMEs in)"
                if direction == "outbound"
                else "Channel.receive_data, 16 KiB records -> events -> sink (+ SENDMEs out)"
            ),
        }
    return out


def _pipeline_crypto_only(total: int, repeat: int) -> dict[str, Any]:
    """Stand-in without the fake relay: OnionCrypto over 3 hops, relay side simulated."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from puretor.proto.relaycrypto import HopCrypto, OnionCrypto

    cells = max(1, total // CELL_DATA)
    keys = [(os.urandom(20), os.urandom(20), os.urandom(16), os.urandom(16)) for _ in range(3)]

    def onion() -> OnionCrypto:
        oc = OnionCrypto()
        for df, db, kf, kb in keys:
            oc.add_hop(HopCrypto(df, db, kf, kb))
        return oc

    body = bytearray(os.urandom(BODY))
    body[1:3] = b"\0\0"
    body[5:9] = b"\0\0\0\0"
    best_out = float("inf")
    for _ in range(repeat):
        oc = onion()
        t0 = time.perf_counter()
        for _i in range(cells):
            oc.encrypt_outbound(bytearray(body), 2)
        best_out = min(best_out, time.perf_counter() - t0)

    # Inbound: the exit (hop 2) digests and the three relays each add their layer.
    import hashlib

    zero_iv = b"\0" * 16
    d = hashlib.sha1(keys[2][1])
    encs = [Cipher(algorithms.AES(k[3]), modes.CTR(zero_iv)).encryptor() for k in keys]
    wire = bytearray()
    for _i in range(cells):
        b = bytearray(body)
        d.update(b)
        b[5:9] = d.digest()[:4]
        for e in reversed(encs):  # exit's layer first, the guard's last
            b = bytearray(e.update(bytes(b)))
        wire += b
    best_in = float("inf")
    run = 32 * BODY
    for _ in range(repeat):
        oc = onion()
        data = bytearray(wire)
        t0 = time.perf_counter()
        runs: list[list[int]] = []
        for o in range(0, len(data), run):
            runs.append(oc.decrypt_inbound_run(data[o : o + run])[0])
        best_in = min(best_in, time.perf_counter() - t0)
        if [h for r in runs for h in r] != [2] * cells:
            raise RuntimeError("crypto-only inbound: cells not recognised by the exit hop")
    payload = cells * CELL_DATA
    return {
        "source": "relay crypto only (bench/bench_cells.py not available): OnionCrypto",
        "payload_mb": payload / MB,
        "outbound": {
            "mb_per_s": payload / best_out / MB,
            "us_per_cell": best_out * 1e6 / cells,
            "what": "OnionCrypto.encrypt_outbound, 3 layers (crypto only)",
        },
        "inbound": {
            "mb_per_s": payload / best_in / MB,
            "us_per_cell": best_in * 1e6 / cells,
            "what": "OnionCrypto.decrypt_inbound_run, runs of 32 (crypto only)",
        },
    }


def cell_pipeline(total: int, repeat: int) -> dict[str, Any]:
    path = bench_cells_path()
    if path is not None:
        try:
            return _pipeline_bench_cells(path, total, repeat)
        except Exception as exc:  # their file changed under us: fall back, say why
            out = _pipeline_crypto_only(total, repeat)
            out["source"] += f"; bench_cells.py failed: {type(exc).__name__}: {exc}"
            return out
    return _pipeline_crypto_only(total, repeat)


def openssl_speed(args: list[str], seconds: int = 1) -> dict[str, Any]:
    """``openssl speed ARGS -bytes 509 -seconds N``: MB/s over 509-byte blocks (or, if this
    openssl has no -bytes, its largest standard block size)."""
    for extra, block in ((["-bytes", str(BODY)], BODY), ([], None)):
        cmd = ["openssl", "speed", "-seconds", str(seconds), *extra, *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"command": " ".join(cmd), "error": str(exc)}
        if proc.returncode != 0:
            continue
        lines = proc.stdout.splitlines()
        for line in reversed(lines):
            parts = line.split()
            if len(parts) >= 2 and parts[-1].endswith("k") and not line.startswith("type"):
                try:
                    kbytes = float(parts[-1][:-1])
                except ValueError:
                    continue
                return {
                    "command": " ".join(cmd),
                    "block_bytes": block,
                    "mb_per_s": kbytes * 1000 / MB,
                    "line": line.strip(),
                }
    return {"command": " ".join(["openssl", "speed", *args]), "error": "no result"}


def run(total_mb: float, repeat: int, seconds: int = 1) -> dict[str, Any]:
    total = int(total_mb * MB)
    result: dict[str, Any] = {"cell_pipeline": cell_pipeline(total, repeat)}
    aes = openssl_speed(["-evp", "aes-128-ctr"], seconds)
    sha = openssl_speed(["sha1"], seconds)
    result["openssl"] = {"aes_128_ctr": aes, "sha1": sha}
    with contextlib.suppress(OSError):
        result["openssl"]["version"] = subprocess.run(
            ["openssl", "version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    if "mb_per_s" in aes and "mb_per_s" in sha:
        per_byte = 3 / aes["mb_per_s"] + 1 / sha["mb_per_s"]
        result["openssl"]["three_hop_ceiling_mb_per_s"] = CELL_DATA / BODY / per_byte
    return result


def run_subprocess(total_mb: float, repeat: int, timeout: float = 600.0) -> dict[str, Any]:
    """`run` in a fresh interpreter (bench_cells.py edits sys.path on import)."""
    cmd = [sys.executable, "-m", "puretor.bench.micro", "--mb", str(total_mb)]
    cmd += ["--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}"}
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m puretor.bench.micro", description=__doc__)
    ap.add_argument("--mb", type=float, default=20.0, help="payload per direction (MB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=1, help="openssl speed -seconds")
    args = ap.parse_args(argv)
    json.dump(run(args.mb, args.repeat, args.seconds), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
