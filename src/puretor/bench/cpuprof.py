"""Run ``tor-client`` under cProfile with a CPU-time clock (``time.process_time``).

    python -m puretor.bench.cpuprof OUT.prof [tor-client arguments...]

``python -m cProfile`` times with the wall clock, which on a busy machine charges the time a
process waits for a CPU to whatever function it was in. A CPU clock charges CPU only; the
price is a slower clock call per profiler event (the shares stay comparable, the totals grow).
The stats are written when tor-client exits (SIGTERM/SIGINT shut it down cleanly).
"""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, args = sys.argv[1], sys.argv[2:]
    from puretor.cli import main as tor_client

    sys.argv = ["tor-client", *args]
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        return tor_client(args)
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
