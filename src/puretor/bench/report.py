"""Rows, targets, the printed table and the JSON document of the benchmark.

Every row holds, per client, the samples of all runs (one or more per run). The table shows the
median with [min-max] and the ratio of medians puretor / C tor. A failed measurement (an error,
a timeout, a wrong SHA-256) is recorded as a failure of that row and client, never as a figure.
"n/a" is reserved for puretor's onion rows while it answers with the SOCKS extended error of an
unsupported onion service.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from puretor.bench.clients import CTOR, KINDS, LABELS, PURETOR


@dataclass(frozen=True)
class Row:
    id: str
    label: str  # may contain {small} {single} {conc} {onion} {idle} {active} {fair}
    unit: str
    better: str  # "lower" | "higher"
    section: str
    digits: int = 2


ROWS: tuple[Row, ...] = (
    Row("boot_cold_log", "bootstrap cold -> 'Bootstrapped 100%'", "s", "lower", "bootstrap"),
    Row("boot_cold_fetch", "bootstrap cold -> first fetch OK", "s", "lower", "bootstrap"),
    Row("boot_warm_log", "bootstrap warm -> 'Bootstrapped 100%'", "s", "lower", "bootstrap"),
    Row("boot_warm_fetch", "bootstrap warm -> first fetch OK", "s", "lower", "bootstrap"),
    Row("small_cold_ttfb", "{small} new circuit: TTFB", "s", "lower", "latency", 3),
    Row("small_cold_total", "{small} new circuit: total", "s", "lower", "latency", 3),
    Row("small_warm_ttfb", "{small} reused circuit: TTFB", "s", "lower", "latency", 3),
    Row("small_warm_total", "{small} reused circuit: total", "s", "lower", "latency", 3),
    Row("single_mbps", "{single} single stream", "MB/s", "higher", "throughput"),
    Row(
        "conc_shared_mbps",
        "{conc} concurrent, one circuit (shared)",
        "MB/s",
        "higher",
        "throughput",
    ),
    Row(
        "conc_isolated_mbps",
        "{conc} concurrent, username per stream",
        "MB/s",
        "higher",
        "throughput",
    ),
    Row("onion_cold_total", "onion page, cold (descriptor + rendezvous)", "s", "lower", "onion", 3),
    Row("onion_warm_total", "onion page, warm (same rendezvous circuit)", "s", "lower", "onion", 3),
    Row("onion_bulk_mbps", "{onion} over the onion service", "MB/s", "higher", "onion"),
    Row("cpu_single", "client CPU per GB, {single} single stream", "s/GB", "lower", "resources"),
    Row("cpu_concurrent", "client CPU per GB, {conc} x2 concurrent", "s/GB", "lower", "resources"),
    Row("cpu_bulk", "client CPU per GB, all exit bulk transfers", "s/GB", "lower", "resources"),
    Row("peak_rss", "peak RSS (VmHWM) of the client", "MiB", "lower", "resources", 1),
    Row("idle_open_s", "{idle} idle SOCKS connections: time to open all", "s", "lower", "idle"),
    Row(
        "idle_rss_growth",
        "RSS growth with {idle} idle + {active} active",
        "MiB",
        "lower",
        "idle",
        1,
    ),
    Row("idle_kib_per_conn", "RSS growth per idle connection", "KiB", "lower", "idle", 1),
    Row("idle_active_s", "{active} active under idle load: wall time", "s", "lower", "idle"),
    Row("idle_complete", "idle conns alive + active streams complete", "%", "higher", "idle", 1),
    Row("fair_idle_ttfb", "page TTFB, warm circuit, idle", "s", "lower", "fairness", 3),
    Row("fair_down_ttfb", "page TTFB, another circuit gets {fair}", "s", "lower", "fairness", 3),
    Row("fair_up_ttfb", "page TTFB, another circuit sends {fair}", "s", "lower", "fairness", 3),
    Row("fair_down_vs_idle", "page TTFB under download / idle (per run)", "x", "lower", "fairness"),
    Row("fair_up_vs_idle", "page TTFB under upload / idle (per run)", "x", "lower", "fairness"),
)
ROW_IDS = tuple(r.id for r in ROWS)
ONION_ROWS = ("onion_cold_total", "onion_warm_total", "onion_bulk_mbps")
FAIR_ROWS = (
    "fair_idle_ttfb",
    "fair_down_ttfb",
    "fair_up_ttfb",
    "fair_down_vs_idle",
    "fair_up_vs_idle",
)


@dataclass(frozen=True)
class Target:
    name: str
    row: str
    op: str  # "<=" | ">="
    limit: float
    own: bool = False  # compare puretor's own median of the row, not the ratio to C tor


TARGETS: tuple[Target, ...] = (
    Target("throughput, single stream", "single_mbps", ">=", 1.0),
    Target("throughput, concurrent shared", "conc_shared_mbps", ">=", 1.0),
    Target("throughput, concurrent isolated", "conc_isolated_mbps", ">=", 1.0),
    Target("warm 1 MiB TTFB", "small_warm_ttfb", "<=", 1.0),
    Target("cold bootstrap (first fetch)", "boot_cold_fetch", "<=", 1.0),
    Target("cold bootstrap (Bootstrapped 100%)", "boot_cold_log", "<=", 1.0),
    Target("CPU s/GB (all bulk)", "cpu_bulk", "<=", 1.5),
    Target("peak RSS", "peak_rss", "<=", 2.0),
    Target("fairness: TTFB under download", "fair_down_ttfb", "<=", 1.0),
    Target("fairness: TTFB under upload", "fair_up_ttfb", "<=", 1.0),
    Target("fairness: upload TTFB / own idle", "fair_up_vs_idle", "<=", 1.5, own=True),
)


@dataclass
class Cell:
    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    na: str = ""  # reason this row does not apply (puretor onion rows only)

    def stats(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        return {
            "median": statistics.median(self.samples),
            "min": min(self.samples),
            "max": max(self.samples),
        }

    @property
    def status(self) -> str:
        if self.failures:
            return "fail"
        if self.na and not self.samples:
            return "n/a"
        if not self.samples:
            return "missing"
        return "ok"


class Results:
    def __init__(self) -> None:
        self.cells: dict[str, dict[str, Cell]] = {r: {k: Cell() for k in KINDS} for r in ROW_IDS}
        self.hash_failures: list[dict[str, Any]] = []

    def add(self, row: str, kind: str, value: float) -> None:
        self.cells[row][kind].samples.append(float(value))

    def fail(self, row: str, kind: str, why: str) -> None:
        self.cells[row][kind].failures.append(why)

    def na(self, row: str, kind: str, why: str) -> None:
        self.cells[row][kind].na = why

    def ratio(self, row: str) -> float | None:
        p = self.cells[row][PURETOR].stats()
        c = self.cells[row][CTOR].stats()
        if p is None or c is None or c["median"] == 0:
            return None
        return p["median"] / c["median"]

    def failures(self) -> list[str]:
        out = []
        for row, per in self.cells.items():
            for kind, cell in per.items():
                out += [f"{row} [{LABELS[kind]}]: {f}" for f in cell.failures]
        return out

    def target_results(self) -> list[dict[str, Any]]:
        out = []
        for t in TARGETS:
            own = self.cells[t.row][PURETOR].stats()
            ratio = (own["median"] if own else None) if t.own else self.ratio(t.row)
            kinds = (PURETOR,) if t.own else KINDS
            ok_cells = all(self.cells[t.row][k].status == "ok" for k in kinds)
            if ratio is None or not ok_cells:
                verdict = "MISS" if self.cells[t.row][PURETOR].failures else "n/a"
            else:
                verdict = (
                    "PASS" if (ratio <= t.limit if t.op == "<=" else ratio >= t.limit) else "MISS"
                )
            out.append(
                {
                    "name": t.name,
                    "row": t.row,
                    "op": t.op,
                    "limit": t.limit,
                    "ratio": ratio,  # with "own": puretor's median, not a ratio to C tor
                    "own": t.own,
                    "result": verdict,
                }
            )
        return out

    def to_json(self, labels: dict[str, str]) -> dict[str, Any]:
        rows = {}
        for r in ROWS:
            entry: dict[str, Any] = {
                "label": labels[r.id],
                "unit": r.unit,
                "better": r.better,
                "section": r.section,
                "ratio_puretor_over_ctor": self.ratio(r.id),
            }
            for kind in KINDS:
                cell = self.cells[r.id][kind]
                entry[kind] = {
                    "status": cell.status,
                    "samples": cell.samples,
                    **(cell.stats() or {}),
                    "failures": cell.failures,
                    **({"na": cell.na} if cell.na else {}),
                }
            rows[r.id] = entry
        return {"rows": rows, "targets": self.target_results(), "hash_failures": self.hash_failures}


def _fmt(x: float, digits: int) -> str:
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def _cell_text(cell: Cell, digits: int) -> str:
    st = cell.stats()
    if cell.failures:
        prefix = f"FAIL x{len(cell.failures)}"
        if st is None:
            return prefix
        return f"{_fmt(st['median'], digits)} ({prefix})"
    if st is None:
        return "n/a" if cell.na else "-"
    if len(cell.samples) == 1:
        return _fmt(st["median"], digits)
    return f"{_fmt(st['median'], digits)} [{_fmt(st['min'], digits)}-{_fmt(st['max'], digits)}]"


def table(results: Results, labels: dict[str, str], header: Sequence[str]) -> str:
    lines = list(header)
    w_label = max(len(labels[r.id]) for r in ROWS) + 2
    cols = [
        (
            r,
            _cell_text(results.cells[r.id][PURETOR], r.digits),
            _cell_text(results.cells[r.id][CTOR], r.digits),
        )
        for r in ROWS
    ]
    w_p = max(24, *(len(c[1]) for c in cols)) + 2
    w_c = max(24, *(len(c[2]) for c in cols)) + 2
    head = f"{'metric':<{w_label}}{'unit':<6}{'puretor median [min-max]':<{w_p}}"
    head += f"{'C tor median [min-max]':<{w_c}}puretor/C tor"
    lines += ["", head, "-" * len(head)]
    section = ""
    for r, p, c in cols:
        if r.section != section:
            section = r.section
            lines.append(f"[{section}]")
        ratio = results.ratio(r.id)
        rtxt = "-" if ratio is None else f"{ratio:.2f}"
        if ratio is not None:
            rtxt += "  (higher is better)" if r.better == "higher" else ""
        lines.append(f"{labels[r.id]:<{w_label}}{r.unit:<6}{p:<{w_p}}{c:<{w_c}}{rtxt}")
    lines += ["", "Targets (ratio of medians, puretor / C tor; 'own': puretor's median alone):"]
    for t in results.target_results():
        rt = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        what = "own  " if t["own"] else "ratio"
        lines.append(f"  {t['result']:<5} {t['name']:<38} {t['op']} {t['limit']:.2f}   {what} {rt}")
    return "\n".join(lines)


def micro_lines(micro: dict[str, Any]) -> list[str]:
    if not micro:
        return []
    lines = ["", "Microbenchmarks (one core):"]
    if "error" in micro:
        return [*lines, f"  failed: {micro['error']}"]
    cp = micro.get("cell_pipeline", {})
    lines.append(
        f"  puretor cell pipeline ({cp.get('source', '?')}, {cp.get('payload_mb', 0):.0f} MB):"
    )
    for d in ("outbound", "inbound"):
        e = cp.get(d)
        if e:
            lines.append(
                f"    {d:<9} {e['mb_per_s']:8.1f} MB/s  {e['us_per_cell']:6.2f} us/cell   {e['what']}"
            )
    ossl = micro.get("openssl", {})
    for key, name in (("aes_128_ctr", "AES-128-CTR"), ("sha1", "SHA-1")):
        e = ossl.get(key, {})
        if "mb_per_s" in e:
            lines.append(
                f"  openssl speed {name:<12} {e['mb_per_s']:8.1f} MB/s  ({e.get('block_bytes') or 'max'}-byte blocks: {e['command']})"
            )
        elif e:
            lines.append(f"  openssl speed {name}: {e.get('error')}")
    if "three_hop_ceiling_mb_per_s" in ossl:
        lines.append(
            f"  3-hop cell ceiling (3 x AES + 1 x SHA-1 per 509 B, OpenSSL speed): "
            f"{ossl['three_hop_ceiling_mb_per_s']:.1f} MB/s payload"
        )
    return lines


def labels_for(sizes: dict[str, str]) -> dict[str, str]:
    return {r.id: r.label.format(**sizes) for r in ROWS}


def median_or_none(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) if vals else None


def ratio_of_medians(top: Iterable[float], bottom: Iterable[float]) -> float | None:
    """median(top) / median(bottom); None when either is empty or the bottom median is 0."""
    a, b = median_or_none(top), median_or_none(bottom)
    return None if a is None or not b else a / b
