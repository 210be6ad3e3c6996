"""Path selection at the live network's scale: time per path and per circuit decision.

Run:  python bench/bench_paths.py [n_relays]     (default 8000, a synthetic network)

* "path": `PathSelector` picks exit, guard and middle for one exit circuit (bandwidth
  weights, families, subnets, the exit policy for a port), as the circuit manager does
  for every new circuit; the first call per port builds the weight tables.
* "isolated circuit decision": what `CircuitManager` decides before building a circuit
  for a new isolation key: an exit for the port, a guard from the guard manager that
  avoids the exit and its family (guard-spec §4.6), a middle; the guard usage is then
  released, as a failed build would.
* memory: tracemalloc of the NetDir (relays with their microdescriptor data) and of the
  selector's weight tables, per relay.

Target: well under a millisecond per path.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from puretor.dir.synth import synth_netdir  # noqa: E402
from puretor.path.guards import GuardManager  # noqa: E402
from puretor.path.select import PathRequest, PathSelector  # noqa: E402

PORTS = (443, 80, 22, 6667, 8080, 993)


def per_call(fn: object, rounds: int) -> list[float]:
    """Microseconds per call, in batches of 100, so the clock's cost does not count."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(100):
            fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t0) / 100 * 1e6)
    return samples


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    tracemalloc.start()
    t0 = time.perf_counter()
    netdir = synth_netdir(n, seed=3)
    built = time.perf_counter() - t0
    netdir_bytes = tracemalloc.get_traced_memory()[0]
    exits = sum("Exit" in r.flags for r in netdir.relays)
    guards_n = sum("Guard" in r.flags for r in netdir.relays)
    print(f"synthetic network: {n} relays ({guards_n} Guard, {exits} Exit), built in {built:.2f} s")

    selector = PathSelector(netdir, rng=random.Random(7))
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    for port in PORTS:
        selector.choose_path(PathRequest(exit_port=port))
    first_calls = (time.perf_counter() - t0) / len(PORTS) * 1e3
    tables = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    rng = random.Random(11)

    def one_path() -> None:
        selector.choose_path(PathRequest(exit_port=rng.choice(PORTS)))

    guards = GuardManager(rng=random.Random(5))
    guards.set_netdir(netdir, 1_700_000_000.0)

    def one_decision() -> None:
        req = PathRequest(exit_port=rng.choice(PORTS))
        exit_relay = selector.choose_exit(req)
        guard, usage = guards.select_guard(1_700_000_000.0, avoid=[exit_relay])
        selector.choose_middle([guard, exit_relay], req)
        guards.cancel(usage)

    paths = per_call(one_path, 30)
    decisions = per_call(one_decision, 30)
    print(f"first path per port (builds the weight tables): {first_calls:8.2f} ms")
    print(
        f"path (exit + guard + middle):                   {statistics.median(paths):8.1f} us "
        f"median [{min(paths):.1f}-{max(paths):.1f}]"
    )
    print(
        f"isolated circuit decision (with guard manager): {statistics.median(decisions):8.1f} us "
        f"median [{min(decisions):.1f}-{max(decisions):.1f}]"
    )
    print(
        f"memory: NetDir {netdir_bytes / 2**20:.1f} MiB = {netdir_bytes / n:.0f} B per relay; ",
        end="",
    )
    print(f"weight tables for {len(PORTS)} ports {tables / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
