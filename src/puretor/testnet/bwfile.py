"""The bandwidth file our authorities read (``V3BandwidthsFile``), as a bandwidth scanner writes it.

Format: bandwidth-file-spec version 1.4.0 - a timestamp line, ``key=value`` header lines, the
``=====`` terminator, then one ``key=value`` line per relay. ``bw`` is in KB/s. Authorities ignore
files whose timestamp is more than a few days old, so the file is rewritten at every start.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "1.4.0"
TERMINATOR = "====="


@dataclass(frozen=True)
class Measurement:
    fingerprint: str  # 40 hex, RSA identity
    nickname: str
    bw_kb: int


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))


def render(measurements: Sequence[Measurement], *, now: float) -> str:
    ts = int(now)
    header = [
        str(ts),
        f"version={VERSION}",
        "software=puretor-testnet",
        f"file_created={_iso(ts)}",
        f"earliest_bandwidth={_iso(ts)}",
        f"latest_bandwidth={_iso(ts)}",
        f"number_eligible_relays={len(measurements)}",
        TERMINATOR,
    ]
    relays = [
        f"bw={m.bw_kb} node_id=${m.fingerprint.upper()} nick={m.nickname} "
        f"measured_at={ts} success=10 error_circ=0 error_stream=0"
        for m in measurements
    ]
    return "\n".join(header + relays) + "\n"


def parse(text: str) -> tuple[int, dict[str, str], dict[str, int]]:
    """(timestamp, header, {fingerprint: bw_kb}) - used by tests and ``status``."""
    lines = text.splitlines()
    timestamp = int(lines[0])
    header: dict[str, str] = {}
    measured: dict[str, int] = {}
    in_header = True
    for line in lines[1:]:
        if in_header and line in (TERMINATOR, "===="):
            in_header = False
            continue
        kv = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if in_header and len(kv) == 1 and "node_id" not in kv:
            header.update(kv)
            continue
        in_header = False
        measured[kv["node_id"].lstrip("$").upper()] = int(kv["bw"])
    return timestamp, header, measured
