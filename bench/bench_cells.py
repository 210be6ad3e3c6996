"""Microbenchmark of the 3-hop cell pipeline with the real sans-I/O core objects.

    python bench/bench_cells.py [--mb 20] [--profile] [--repeat 3]

* outbound: ``Stream.write()`` of one large buffer -> DATA cells sealed for hop 3 as
  the windows allow, onion-encrypted and framed, queued in the channel's circuit
  scheduler and taken out with ``data_to_send()`` as the asyncio layer does; the fake relay's SENDMEs are fed
  back through ``Channel.receive_data`` (that time counts too: it is client work).
  Only the fake relay's own processing is excluded from the timing.
* inbound: a prepared byte stream of 3-hop-encrypted DATA cells from the fake relay
  (windows ignored on its side: the client grants SENDMEs as it goes) fed to
  ``Channel.receive_data`` in 16 KiB chunks (a TLS record each) -> decrypt, digest
  check, dispatch, windows and SENDMEs, the queued events delivered to a counting sink.

Throughput is MB/s of stream payload (498 bytes per cell) per second of this
process's CPU time (``--wall`` for wall-clock time), i.e. on one core.  A
reference lines show raw AES-128-CTR + SHA-1 over 509-byte cells — the ceiling for
per-cell work built on `cryptography`/`hashlib` — cell by cell, and batched the way
the core batches cipher calls (one call per layer per run of cells).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fakes.relay import FakeRelay, FakeRelayConfig, build_circuit, open_channel  # noqa: E402
from puretor.proto.channel import Channel  # noqa: E402
from puretor.proto.events import EventQueue, StreamData, StreamEnded  # noqa: E402
from puretor.proto.tunnel import Tunnel  # noqa: E402

MB = 1_000_000
# CPU time of this process: "MB/s on one core", and robust on a shared machine.
clock = time.process_time
CELL_DATA = 498
TLS_RECORD = 16 * 1024


class CountingSink:
    """The cheapest possible application: count the bytes.  (The stream's owner: the
    events of its stream reach it through `deliver`.)"""

    def __init__(self) -> None:
        self.n = 0
        self.ended = False

    def stream_connected(self, connected: object) -> None:
        pass

    def stream_data(self, data: bytes) -> None:
        self.n += len(data)

    def stream_resolved(self, answers: object) -> None:
        pass

    def stream_ended(self, reason: int, end: object, message: str) -> None:
        self.ended = True

    def stream_writable(self) -> None:
        pass


def deliver(events: EventQueue) -> None:
    """What the asyncio layer does after each call into the core, for the events these
    benchmarks produce (data and the end of a stream; the rest is dropped)."""
    for event in events.drain():
        if type(event) is StreamData:
            event.stream.owner.stream_data(event.data)
        elif type(event) is StreamEnded:
            event.stream.owner.stream_ended(event.reason, event.end, event.message)


def _setup(config: FakeRelayConfig) -> tuple[FakeRelay, Channel, Tunnel]:
    fake = FakeRelay(config)
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, 3, sendme_accept_min_version=1)
    return fake, channel, circ


# -- outbound -----------------------------------------------------------------------------


class _Timer:
    """Accumulates time (and, optionally, a cProfile) over the client's work only."""

    def __init__(self, prof: cProfile.Profile | None) -> None:
        self.spent = 0.0
        self.prof = prof
        self._t0 = 0.0

    def __enter__(self) -> None:
        if self.prof is not None:
            self.prof.enable()
        self._t0 = clock()

    def __exit__(self, *exc: object) -> None:
        self.spent += clock() - self._t0
        if self.prof is not None:
            self.prof.disable()


def bench_outbound(total: int, prof: cProfile.Profile | None = None) -> tuple[float, int]:
    """Seconds of client work to send ``total`` payload bytes, and cells sent."""
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}))
    stream = circ.open_stream(CountingSink(), "sink.example", 9)
    fake.receive_data(channel.take_output())
    channel.receive_data(fake.take_output(), fake.now)  # CONNECTED
    deliver(channel.events)
    data = os.urandom(total)
    now = fake.now
    timer = _Timer(prof)
    with timer:
        stream.write(data)
        deliver(channel.events)
        out = channel.data_to_send(now)
    cells = 0
    while out:
        cells += len(out) // 514
        fake.receive_data(out)  # not timed: the relay's work
        back = fake.take_output()
        with timer:
            for i in range(0, len(back), TLS_RECORD):
                channel.receive_data(back[i : i + TLS_RECORD], now)
                deliver(channel.events)
            out = channel.data_to_send(now)
            deliver(channel.events)
    fs = fake.stream(circ.circ_id, stream.stream_id)
    assert fs is not None and len(fs.received) == total, "outbound data did not all arrive"
    assert not fake.violations, fake.violations
    return timer.spent, cells


# -- inbound ------------------------------------------------------------------------------


def prepare_inbound(total: int) -> tuple[FakeRelay, Channel, Tunnel, CountingSink, bytes]:
    cfg = FakeRelayConfig(
        source_ports={80: total}, ignore_stream_windows=True, ignore_circuit_windows=True
    )
    fake, channel, circ = _setup(cfg)
    sink = CountingSink()
    circ.open_stream(sink, "source.example", 80)
    fake.receive_data(channel.take_output())  # BEGIN -> CONNECTED + every DATA cell + END
    return fake, channel, circ, sink, fake.take_output()


def bench_inbound(total: int, prof: cProfile.Profile | None = None) -> tuple[float, int]:
    fake, channel, circ, sink, wire = prepare_inbound(total)
    now = fake.now
    # TLS hands us bytes objects: slice them out before timing.
    records = [wire[i : i + TLS_RECORD] for i in range(0, len(wire), TLS_RECORD)]
    timer = _Timer(prof)
    with timer:
        for record in records:
            channel.receive_data(record, now)
            deliver(channel.events)
            if channel.has_output:
                channel.data_to_send(now)  # our SENDMEs leave, as the asyncio layer sends them
    spent = timer.spent
    assert sink.n == total and sink.ended, (sink.n, total)
    assert circ.cells_received >= total // CELL_DATA
    return spent, len(wire) // 514


# -- reference: the crypto alone ----------------------------------------------------------


def bench_reference(cells: int = 50_000) -> dict[str, float]:
    """MB/s of 498-byte payloads for the per-cell crypto alone (no framing, no Python logic)."""
    body = os.urandom(509)
    key = os.urandom(16)
    results: dict[str, float] = {}
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    t0 = clock()
    for _ in range(cells):
        enc.update(body)
    results["AES-128-CTR, 1 x 509 B"] = cells * CELL_DATA / (clock() - t0) / MB
    d = hashlib.sha1(b"seed")
    t0 = clock()
    for _ in range(cells):
        d.update(body)
        d.digest()
    results["SHA-1 running digest, 509 B"] = cells * CELL_DATA / (clock() - t0) / MB
    encs = [
        Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16))).encryptor() for _ in range(3)
    ]
    d = hashlib.sha1(b"seed")
    t0 = clock()
    for _ in range(cells):
        d.update(body)
        d.digest()
        x = body
        for e in encs:
            x = e.update(x)
    results["3-hop cell: SHA-1 + 3 x AES, per cell"] = cells * CELL_DATA / (clock() - t0) / MB
    # What the core does now: digest per cell, each layer once over a 32-cell batch.
    # Two buffers in turn: cryptography refuses an update_into whose input and output
    # overlap (as the core does it).
    size = 509 * 32
    batch, spare = bytearray(size + 15), bytearray(size + 15)
    layers = [e.update_into for e in encs]
    d = hashlib.sha1(b"seed")
    t0 = clock()
    for _ in range(cells // 32):
        for _o in range(0, size, 509):
            d.update(body)
            d.digest()
        for u in layers:
            u(memoryview(batch)[:size], spare)
            batch, spare = spare, batch
    results["3-hop cell, batched: SHA-1 per cell + 3 x AES per 32"] = (
        cells // 32 * 32 * CELL_DATA / (clock() - t0) / MB
    )
    big = os.urandom(TLS_RECORD)
    t0 = clock()
    n = cells * 509 // TLS_RECORD
    for _ in range(n):
        enc.update(big)
    results["AES-128-CTR bulk, 16 KiB (openssl speed)"] = n * TLS_RECORD / (clock() - t0) / MB
    return results


# -- driver ---------------------------------------------------------------------------------


def _profile(label: str, fn: object, total: int) -> None:
    prof = cProfile.Profile()
    fn(total, prof)  # type: ignore[operator]
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(16)
    print(f"\n--- cProfile, {label}: client work only ---")
    print("\n".join(s.getvalue().splitlines()[4:]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20.0, help="payload per direction (MB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    args = ap.parse_args(argv)
    if args.wall:
        global clock
        clock = time.perf_counter
    total = int(args.mb * MB)

    print(f"puretor cell pipeline, 3 hops, {total / MB:.0f} MB payload per direction, 1 core")
    print(f"python {sys.version.split()[0]}\n")
    for name, mbps in bench_reference().items():
        print(f"  reference  {name:<54} {mbps:8.1f} MB/s")
    print()
    what = {"outbound": "Stream.write -> cells", "inbound": "receive_data -> sink"}
    for label, fn in (("outbound", bench_outbound), ("inbound", bench_inbound)):
        best = min(fn(total)[0] for _ in range(args.repeat))
        mbps = total / best / MB
        us_per_cell = best * 1e6 / (total / CELL_DATA)
        print(f"  {label:<9}  {what[label]:<54} {mbps:8.1f} MB/s  ({us_per_cell:.2f} us/cell)")
    if args.profile:
        _profile("outbound", bench_outbound, total)
        _profile("inbound", bench_inbound, total)


if __name__ == "__main__":
    main()
