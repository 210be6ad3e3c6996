"""A censor inside the private network: the namespace's firewall blocks the authorities and
every listed relay for "censored" processes, those running with group id
`layout.CENSORED_GID`, and leaves the bridges reachable.

Other processes (relays, other clients of a shared network) are not affected, so the rules
are installed once when the network starts. A test runs a client censored with
``subprocess.Popen(..., group=info["censor"]["gid"])`` (as root; the uid stays) and reads
`dropped_packets` afterwards: a client that never even tries a blocked address leaves it 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

TABLE = "puretor_censor"


class CensorError(RuntimeError):
    pass


def ruleset(blocked: Sequence[str], gid: int) -> str:
    """An nft script: drop (silently, as a censor does) packets of sockets of group `gid` to
    any address in `blocked`, counting them."""
    v4 = [a for a in blocked if ":" not in a]
    v6 = [a for a in blocked if ":" in a]
    lines = [
        f"table inet {TABLE} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
    ]
    if v4:
        lines.append(f"    meta skgid {gid} ip daddr {{ {', '.join(v4)} }} counter drop")
    if v6:
        lines.append(f"    meta skgid {gid} ip6 daddr {{ {', '.join(v6)} }} counter drop")
    lines += ["  }", "}"]
    # Delete a table left by an earlier run of this namespace first ("add" makes it exist).
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\n" + "\n".join(lines) + "\n"


def available() -> bool:
    return shutil.which("nft") is not None


def install(
    run: Callable[..., subprocess.CompletedProcess[Any]], blocked: Sequence[str], gid: int
) -> None:
    """Install the rules with `run` (a `TestNetwork.run`: inside the namespace)."""
    proc = run(["nft", "-f", "-"], input=ruleset(blocked, gid), capture_output=True, text=True,
               timeout=20)  # fmt: skip
    if proc.returncode != 0:
        raise CensorError(f"nft failed: {proc.stderr.strip()}")


def dropped_packets(run: Callable[..., subprocess.CompletedProcess[Any]]) -> int:
    """Packets the censor has dropped so far (all its rules)."""
    proc = run(["nft", "-j", "list", "table", "inet", TABLE], capture_output=True, text=True,
               timeout=20)  # fmt: skip
    if proc.returncode != 0:
        raise CensorError(f"nft failed: {proc.stderr.strip()}")
    return counted_packets(json.loads(proc.stdout))


def counted_packets(listing: Any) -> int:
    """The sum of the counters in `nft -j list table` output."""
    total = 0
    for item in listing.get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                total += int(counter.get("packets", 0))
    return total
