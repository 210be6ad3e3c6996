"""``python -m puretor.bench``: puretor's tor-client against Debian's C tor client.

Both clients run with the same torrc against the same private network (`puretor.testnet`), in
the same run, alternating, over several repetitions; the benchmark prints medians with min-max,
the ratio puretor / C tor and PASS/MISS per target, and writes a JSON document.

Modules: cli (command line, network set-up, output), runner (the scenarios of one run),
clients (the two client processes and their start-up timing), socks (our asyncio SOCKS5 +
HTTP client, SHA-256 checked), procstat (/proc readers), report (rows, targets, table),
micro (cell pipeline and openssl speed), profiling (py-spy / cProfile summaries).
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from puretor.bench.cli import main as _main

    return _main(argv)
