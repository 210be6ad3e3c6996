"""Run one command of a documented shell block as its expectation says (used by
test_docs_commands.py: the block's bash calls this program in place of the command).

    python docs_cmd.py --name NAME [--until REGEX [--watch FILE]] [--signal INT]
                       [--ok 0,130] [--timeout S] [--grace S] -- COMMAND...

The command runs in a process group of its own, its output passed through unchanged.

* Without ``--until`` it must finish within ``--timeout`` with an exit status from ``--ok``.
* With ``--until`` it runs until a line of its output (or a new line of ``--watch``, a file
  the command writes its progress to; removed first so that only this run's lines count)
  matches REGEX, then gets ``--signal`` (SIGINT: what Ctrl-C in a terminal sends to the
  foreground process group; with ``--again S`` a second one after S seconds, as a user
  presses Ctrl-C again) and must exit within ``--grace`` seconds with a status from
  ``--ok``. Exiting before the line appears is a failure. Past ``--timeout`` without the
  line, it gets the same signal, then SIGTERM, then SIGKILL.

Either way nothing may be left running in its process group afterwards. The last line
printed is ``##docs-cmd {json}`` (what happened); the exit status is 0 when all of that
held, else 1, so that ``bash -e`` stops the block there as it would for a failing command.
Only the standard library is used: this runs with the test's interpreter inside the
sandbox, whatever environment the block has activated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MARK = "##docs-cmd "


def _group_members(pgid: int) -> list[int]:
    """PIDs (not zombies) whose process group is `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="docs_cmd.py")
    ap.add_argument("--name", required=True)
    ap.add_argument("--until")
    ap.add_argument("--watch")
    ap.add_argument("--signal", default="INT")
    ap.add_argument("--ok", default="0")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--grace", type=float, default=60.0)
    ap.add_argument("--again", type=float, help="send the signal a second time after S s")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command")
    ok_codes = {int(c) for c in args.ok.split(",")}
    stop_sig = signal.Signals[f"SIG{args.signal}"]
    until = re.compile(args.until) if args.until else None
    watch = Path(args.watch) if args.watch else None
    if watch is not None:
        watch.unlink(missing_ok=True)

    matched: list[str] = []
    match_event = threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        process_group=0,
    )  # fmt: skip
    pgid = proc.pid

    def pump() -> None:
        assert proc.stdout is not None
        out = sys.stdout.buffer
        for raw in proc.stdout:
            out.write(raw)
            out.flush()
            if until is not None and not match_event.is_set():
                line = raw.decode(errors="replace").rstrip("\n")
                if until.search(line):
                    matched.append(line)
                    match_event.set()

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()

    offset = 0
    problem: str | None = None
    stopped: str | None = None
    phase, deadline = "running", t0 + args.timeout  # -> "stopping" -> "killing" -> "killed"
    last_signal, repeats = 0.0, 0
    while proc.poll() is None:
        now = time.monotonic()
        if watch is not None and until is not None and not match_event.is_set():
            try:
                with watch.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if until.search(line):
                    matched.append(f"{watch}: {line}")
                    match_event.set()
                    break
        if phase == "running" and match_event.is_set():
            stopped = stop_sig.name
            _signal_group(pgid, stop_sig)
            phase, deadline, last_signal = "stopping", now + args.grace, now
        elif phase == "running" and now > deadline:
            problem = (
                f"no line matching {args.until!r} within {args.timeout:.0f} s"
                if until is not None
                else f"did not finish within {args.timeout:.0f} s"
            )
            stopped = f"{stop_sig.name} (timeout)"  # the clean way first, then TERM, KILL
            _signal_group(pgid, stop_sig)
            phase, deadline, last_signal = "stopping", now + args.grace, now
        elif phase == "stopping" and args.again and not repeats and now > last_signal + args.again:
            _signal_group(pgid, stop_sig)  # once more, as a user presses Ctrl-C again
            repeats = 1
        elif phase == "stopping" and now > deadline:
            problem = problem or f"still running {args.grace:.0f} s after {stop_sig.name}"
            _signal_group(pgid, signal.SIGTERM)
            phase, deadline = "killing", now + 20
        elif phase == "killing" and now > deadline:
            _signal_group(pgid, signal.SIGKILL)
            phase = "killed"
        time.sleep(0.1)
    rc = proc.returncode
    pumper.join(10)
    seconds = time.monotonic() - t0

    # Nothing of it may outlive it (give shutting-down children a moment).
    deadline = time.monotonic() + 15
    left = _group_members(pgid)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _group_members(pgid)
    left_running = [f"{pid}: {_cmdline(pid)}" for pid in left]
    if left:
        _signal_group(pgid, signal.SIGKILL)

    if problem is None:
        if until is not None and not matched:
            problem = f"exited with status {rc} before printing a line matching {args.until!r}"
        elif rc not in ok_codes:
            problem = f"exit status {rc}, expected one of {sorted(ok_codes)}"
        elif left_running:
            problem = f"left running in its process group: {left_running}"
    report = {
        "name": args.name,
        "argv": command,
        "rc": rc,
        "matched": matched[0] if matched else None,
        "stopped_with": stopped if not repeats else f"{stopped} x{repeats + 1}",
        "seconds": round(seconds, 1),
        "left_running": left_running,
        "problem": problem,
    }
    sys.stdout.flush()
    print("\n" + MARK + json.dumps(report), flush=True)  # on a line of its own
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main())
