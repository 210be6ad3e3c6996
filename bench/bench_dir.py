"""Directory benchmark: parse + verify a live-size microdesc consensus, its microdescs, build NetDir.

Run:  python bench/bench_dir.py [n_relays] [n_authorities]

Authorities get the live network's key sizes (3072-bit identity, 2048-bit signing keys).

Targets (brief): <= 1 s for parse + verify + build of an 8000-relay network,
and <= 40 MiB for the network view (measured with tracemalloc).
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from puretor.dir.authcert import parse_authcerts  # noqa: E402
from puretor.dir.build import build_netdir  # noqa: E402
from puretor.dir.consensus import parse_consensus  # noqa: E402
from puretor.dir.microdesc import parse_microdescs  # noqa: E402
from puretor.dir.state import DirState  # noqa: E402
from puretor.dir.synth import SynthNetwork, synth_network  # noqa: E402
from puretor.dir.verify import verify_consensus  # noqa: E402

MiB = 1024 * 1024


def pipeline(net: SynthNetwork) -> tuple[dict[str, float], object]:
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    consensus = parse_consensus(net.consensus)
    t1 = time.perf_counter()
    certs = parse_authcerts(net.certs)
    verify_consensus(consensus, certs, net.authority_list, net.now)
    t2 = time.perf_counter()
    mds = {m.digest: m for m in parse_microdescs(net.microdescs)}
    t3 = time.perf_counter()
    netdir = build_netdir(consensus, mds)
    t4 = time.perf_counter()
    times.update(
        parse_consensus=t1 - t0,
        verify=t2 - t1,
        parse_microdescs=t3 - t2,
        build_netdir=t4 - t3,
        total=t4 - t0,
    )
    assert len(netdir.relays) == len(consensus.routers) and all(r.has_md for r in netdir.relays)
    return times, netdir


def via_state(net: SynthNetwork) -> float:
    """The same work through DirState, with microdescs arriving in 92-digest batches."""
    t0 = time.perf_counter()
    state = DirState(net.authority_list)
    state.add_certs(net.certs, net.now)
    assert state.add_consensus(net.consensus, net.now)
    mds_by_digest = {}
    body = net.microdescs
    from puretor.dir.microdesc import split_microdescs

    for start, end in split_microdescs(body):
        mds_by_digest[net.md_digests[len(mds_by_digest)]] = body[start:end]
    for req in state.next_requests(net.now):
        state.add_microdescs(b"".join(mds_by_digest[d] for d in req.digests), req.digests, net.now)
    assert state.have_enough_dir_info(net.now)
    assert state.netdir(net.now) is not None
    return time.perf_counter() - t0


def main() -> None:
    n_relays = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    n_auth = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    t = time.perf_counter()
    net = synth_network(n_relays, seed=1, n_authorities=n_auth, real_key_sizes=True)
    print(
        f"synthetic network: {n_relays} relays, {n_auth} authorities, "
        f"consensus {len(net.consensus) / MiB:.2f} MiB, microdescs {len(net.microdescs) / MiB:.2f} MiB "
        f"(generated in {time.perf_counter() - t:.2f} s)"
    )

    runs = [pipeline(net)[0] for _ in range(3)]
    best = min(runs, key=lambda r: r["total"])
    print("best of 3 (seconds):")
    for name, value in best.items():
        print(f"  {name:18} {value:7.3f}")
    print(
        f"  {'via DirState':18} {min(via_state(net) for _ in range(2)):7.3f}  (incl. 92-md batches)"
    )

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _, netdir = pipeline(net)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    print("memory (tracemalloc, input bytes excluded):")
    print(f"  peak during parse+verify+build  {(peak - base) / MiB:6.1f} MiB")
    print(f"  NetDir alone (retained)         {(current - base) / MiB:6.1f} MiB")
    del netdir
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    state = DirState(net.authority_list)
    state.add_certs(net.certs, net.now)
    state.add_consensus(net.consensus, net.now)
    state.add_microdescs(net.microdescs, None, net.now)
    state.netdir(net.now)
    gc.collect()
    print(
        f"  DirState (consensus+mds+NetDir) {(tracemalloc.get_traced_memory()[0] - base) / MiB:6.1f}"
        " MiB (keeps the raw documents for the cache)"
    )
    tracemalloc.stop()


if __name__ == "__main__":
    main()
