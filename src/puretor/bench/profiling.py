"""Profiles of the puretor client process during chosen scenarios.

* py-spy (``--profile py-spy``): ``py-spy record --format raw`` attached to the tor-client PID
  for the duration of a scenario, stopped with SIGINT; the collapsed stacks are summarised as
  self ("own") and inclusive ("total") shares of the samples.
  py-spy counts a thread as active while it is runnable, so on a busy machine the time a
  process waits for a CPU after a wake-up lands in ``EpollSelector.select`` (and in socket
  writes that wake the peer); the summary therefore also shows shares without ``select``.
* cProfile (``--profile cprofile``): tor-client runs under `puretor.bench.cpuprof` (cProfile
  with a CPU clock); the stats of the whole process life are summarised by tottime and
  cumtime, with exact call counts.
"""

from __future__ import annotations

import contextlib
import io
import pstats
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any


class PySpy:
    """``async with``-free helper: start() before the transfer, stop() after."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""

    def start(self) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            self.error = "py-spy not found (pip install py-spy)"
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(self.pid),
                "--format",
                "raw",
                "-r",
                str(self.rate),
                "-o",
                str(self.out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.out.with_suffix(".log")).open("wb"),
        )
        time.sleep(0.3)  # let it attach before the transfer starts

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.error = "py-spy did not stop on SIGINT"
        self.proc = None


def _frame_name(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)': merge lines of one function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarize_collapsed(paths: list[Path], top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function over py-spy raw (collapsed) files."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            parts = stack.split(";")
            if parts and (parts[0].startswith("thread (") or parts[0].startswith("process ")):
                parts = parts[1:]  # --threads / --subprocesses prefixes
            frames = [_frame_name(f) for f in parts if f]
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
    waiting = sum(n for f, n in own.items() if f.startswith("EpollSelector.select"))
    busy = total - waiting
    return {
        "samples": total,
        "select_share": waiting / total if total else 0.0,
        "self_without_select": (
            [
                (f, n / busy)
                for f, n in own.most_common(top + 1)
                if not f.startswith("EpollSelector.select")
            ][:top]
            if busy
            else []
        ),
        "self": [(f, n / total) for f, n in own.most_common(top)] if total else [],
        # Frames on every stack (the event loop's own chain) say nothing: leave them out.
        "inclusive": (
            [(f, n / total) for f, n in incl.most_common() if n < 0.99 * total][:top]
            if total
            else []
        ),
    }


def summarize_cprofile(paths: list[Path], top: int = 25) -> str:
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return "(no cProfile output)"
    stats = pstats.Stats(existing[0], stream=io.StringIO())
    for p in existing[1:]:
        stats.add(p)
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def format_summary(label: str, summary: dict[str, Any], top: int = 20) -> list[str]:
    lines = [
        f"py-spy, {label}: {summary['samples']} samples while runnable (py-spy: on CPU or waiting for one)"
    ]
    lines.append("  self (own time)                                                     share")
    for f, share in summary["self"][:top]:
        lines.append(f"    {f[:66]:<66} {share * 100:5.1f}%")
    lines.append(
        f"  self, without EpollSelector.select ({summary.get('select_share', 0) * 100:.0f}% of "
        "samples: epoll_wait incl. waiting for a CPU)"
    )
    for f, share in summary.get("self_without_select", [])[:top]:
        lines.append(f"    {f[:66]:<66} {share * 100:5.1f}%")
    lines.append("  inclusive, below the event loop (function and its callees)         share")
    for f, share in summary["inclusive"][:top]:
        lines.append(f"    {f[:66]:<66} {share * 100:5.1f}%")
    return lines
