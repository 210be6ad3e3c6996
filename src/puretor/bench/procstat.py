"""What the benchmark reads about a client process from /proc, and our own fd limit."""

from __future__ import annotations

import os
import resource
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds (/proc/PID/stat fields 14, 15)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) etc. of `pid` in KiB (/proc/PID/status)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Vm") and value.strip().endswith("kB"):
            out[name] = int(value.split()[0])
    return out


def rss_mib(pid: int) -> float:
    return memory_kib(pid).get("VmRSS", 0) / 1024


def peak_rss_mib(pid: int) -> float:
    return memory_kib(pid).get("VmHWM", 0) / 1024


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_limit(pid: int) -> int | None:
    """The soft "Max open files" of `pid`."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    except OSError:
        pass
    return None


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise our RLIMIT_NOFILE to at least `want` (soft = hard; root may raise the hard limit).
    Child processes (both Tor clients) inherit it. Returns the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            soft, hard = want, want
        except (ValueError, OSError):
            pass
    target = hard if hard != resource.RLIM_INFINITY else max(want, soft)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def system_jiffies() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of the whole machine (/proc/stat "cpu" line)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(x) for x in parts[:8]]  # user nice system idle iowait irq softirq steal
    return values[3] + values[4], sum(values)


def idle_fraction(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of the machine's CPU time that was idle between two `system_jiffies` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None
