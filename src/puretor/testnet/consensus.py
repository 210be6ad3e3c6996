"""Just enough consensus reading to decide that the network is ready (no signature checks:
we read the authorities' own cached copy from disk)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RouterEntry:
    nickname: str
    fingerprint: str  # 40 upper-case hex
    address: str
    orport: int
    flags: frozenset[str]
    ipv6: str | None = None  # the `a` line's "[addr]:port" (an IPv6 ORPort), if any


@dataclass
class ConsensusSummary:
    valid_after: str = ""
    fresh_until: str = ""
    valid_until: str = ""
    routers: dict[str, RouterEntry] = field(default_factory=dict)  # by fingerprint
    params: dict[str, int] = field(default_factory=dict)
    bandwidth_weights: dict[str, int] = field(default_factory=dict)
    signatures: int = 0


def _b64_to_hex(b64: str) -> str:
    return base64.b64decode(b64 + "=" * (-len(b64) % 4)).hex().upper()


def parse(text: str) -> ConsensusSummary:
    out = ConsensusSummary()
    current: dict[str, object] | None = None

    def flush() -> None:
        if current is not None:
            entry = RouterEntry(**current)  # type: ignore[arg-type]
            out.routers[entry.fingerprint] = entry

    times: dict[str, str] = {}
    for line in text.splitlines():
        kw, _, rest = line.partition(" ")
        if kw == "r":
            flush()
            parts = rest.split()
            # microdesc flavour: nick id date time IP ORPort DirPort;
            # ns flavour has the descriptor digest after the id, hence the index from the end.
            current = {
                "nickname": parts[0],
                "fingerprint": _b64_to_hex(parts[1]),
                "address": parts[-3],
                "orport": int(parts[-2]),
                "flags": frozenset(),
            }
        elif kw == "s" and current is not None:
            current["flags"] = frozenset(rest.split())
        elif kw == "a" and current is not None and "ipv6" not in current:
            current["ipv6"] = rest.strip()
        elif kw in ("valid-after", "fresh-until", "valid-until"):
            times[kw] = rest
        elif kw == "params":
            out.params.update(_kv(rest))
        elif kw == "bandwidth-weights":
            out.bandwidth_weights.update(_kv(rest))
        elif kw == "directory-footer":
            flush()
            current = None
        elif kw == "directory-signature":
            out.signatures += 1
    flush()
    out.valid_after = times.get("valid-after", "")
    out.fresh_until = times.get("fresh-until", "")
    out.valid_until = times.get("valid-until", "")
    return out


def _kv(rest: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=", 1) for item in rest.split() if "=" in item)}


def missing_flags(
    summary: ConsensusSummary,
    expected: Mapping[str, tuple[str, frozenset[str]]],
    ipv6: Mapping[str, str] | None = None,
) -> list[str]:
    """Human-readable problems, empty when every expected relay has at least its flags.

    `expected` maps fingerprint -> (nickname, flags); `ipv6` fingerprint -> "[addr]:port",
    the IPv6 ORPort a relay's `a` line must show.
    """
    problems = []
    for fp, (nick, flags) in expected.items():
        entry = summary.routers.get(fp)
        if entry is None:
            problems.append(f"{nick} not listed")
        elif not flags <= entry.flags:
            problems.append(f"{nick} lacks {','.join(sorted(flags - entry.flags))}")
        elif ipv6 and fp in ipv6 and entry.ipv6 != ipv6[fp]:
            problems.append(f"{nick} has no `a` line for {ipv6[fp]}")
    if not summary.bandwidth_weights:
        problems.append("no bandwidth-weights line")
    return problems
