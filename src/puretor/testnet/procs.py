"""Start and stop exactly the processes we started.

A PID alone can be recycled, so each record also keeps the process's start time
(``/proc/PID/stat`` field 22): we only ever signal a PID whose start time still matches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Children of this process, so stopping them also reaps them (no zombies left behind).
_children: dict[int, subprocess.Popen[bytes]] = {}
_records: dict[int, ProcRecord] = {}  # every process spawned, for `stop_all`


@dataclass(frozen=True)
class ProcRecord:
    name: str
    pid: int
    starttime: int
    argv: list[str]
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProcRecord:
        return cls(d["name"], d["pid"], d["starttime"], list(d["argv"]), d["log"])


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of `pid`, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # skip "pid (comm) ", comm may hold spaces
    return fields[0], int(fields[19])


def record_of(name: str, pid: int, argv: Sequence[str], log: str = "") -> ProcRecord:
    """A record of a process someone else started (e.g. ourselves, before an exec)."""
    st = _stat(pid)
    if st is None:
        raise ProcessLookupError(pid)
    return ProcRecord(name, pid, st[1], list(argv), log)


def cmdline(pid: int) -> str:
    """The command line of `pid`, for messages ("" when gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return ""
    return " ".join(arg.decode(errors="replace") for arg in raw.split(b"\0") if arg)


def is_alive(rec: ProcRecord) -> bool:
    child = _children.get(rec.pid)
    if child is not None and child.poll() is not None:
        return False
    st = _stat(rec.pid)
    return st is not None and st[1] == rec.starttime and st[0] not in ("Z", "X")


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
) -> ProcRecord:
    """Start `argv` in its own session, stdout+stderr to `log`.

    `die_with_parent` asks the kernel to SIGTERM the process if our thread dies (so a killed
    test run leaves no tor behind); only safe from the main thread, which lives as long as we do.
    """
    argv = list(argv)
    if (
        die_with_parent
        and threading.current_thread() is threading.main_thread()
        and shutil.which("setpriv")
    ):
        argv = ["setpriv", "--pdeathsig", "TERM", *argv]
    with log.open("ab") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # Ctrl-C in a terminal goes to us, not straight to tor
            close_fds=True,
        )
    _children[child.pid] = child
    st = _stat(child.pid)
    rec = ProcRecord(name, child.pid, st[1] if st else 0, argv, str(log))
    _records[child.pid] = rec
    return rec


def signal_proc(rec: ProcRecord, sig: int) -> bool:
    """Send `sig` if `rec` is still that very process. Returns whether it was sent."""
    if not is_alive(rec):
        return False
    try:
        os.kill(rec.pid, sig)
        return True
    except ProcessLookupError:
        return False


def wait_dead(records: Iterable[ProcRecord], timeout: float) -> list[ProcRecord]:
    """Wait until all are gone; returns the ones still alive after `timeout`."""
    pending = list(records)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if is_alive(r)]
        if pending:
            time.sleep(0.05)
    return [r for r in pending if is_alive(r)]


def stop(
    records: Iterable[ProcRecord], *, timeout: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """`sig` (SIGTERM by default) to each, SIGKILL to whatever is left after `timeout`."""
    records = list(records)
    for rec in records:
        if signal_proc(rec, sig) and sig != signal.SIGKILL:
            signal_proc(rec, signal.SIGCONT)  # a SIGSTOPped process only sees SIGTERM once resumed
    for rec in wait_dead(records, timeout):
        print(
            f"puretor.testnet: {rec.name} (pid {rec.pid}) ignored signal {sig} for "
            f"{timeout:.0f}s; killing it",
            file=sys.stderr,
        )
        signal_proc(rec, signal.SIGKILL)
    wait_dead(records, 5.0)
    for rec in records:
        _records.pop(rec.pid, None)
        child = _children.pop(rec.pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)


def stop_all(timeout: float = 10.0) -> None:
    """Stop every process this Python process spawned through `spawn` and that still runs."""
    live = [rec for rec in _records.values() if is_alive(rec)]
    stop(live, timeout=timeout)
