"""Commands started with ``puretor-testnet exec``: recorded so that ``down`` stops them too.

`exec` replaces itself with the command (no fork), so the command's PID is the one `exec` had,
and so is its start time; each gets a file ``exec/<pid>.json`` in the work directory holding its
`ProcRecord`. `down` then signals only a PID whose start time still matches (never a reused one).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from puretor.testnet import procs
from puretor.testnet.procs import ProcRecord

EXEC_DIR = "exec"


def record_self(workdir: Path, argv: Sequence[str]) -> Path:
    """Write this process's record (call it right before exec'ing `argv`)."""
    rec = procs.record_of("exec", os.getpid(), argv)
    directory = workdir / EXEC_DIR
    directory.mkdir(exist_ok=True)
    path = directory / f"{rec.pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec.to_json()))
    tmp.rename(path)
    return path


def recorded(workdir: Path) -> list[ProcRecord]:
    """Every recorded command, running or not."""
    records = []
    for path in sorted((workdir / EXEC_DIR).glob("*.json")):
        with contextlib.suppress(ValueError, KeyError, OSError):
            records.append(ProcRecord.from_json(json.loads(path.read_text())))
    return records


def running(workdir: Path) -> list[ProcRecord]:
    return [rec for rec in recorded(workdir) if procs.is_alive(rec)]


def stop_all(workdir: Path, timeout: float = 10.0) -> list[ProcRecord]:
    """Stop the recorded commands still running (SIGTERM, then SIGKILL after `timeout`) and
    forget every record. Returns the ones that were running."""
    alive = running(workdir)
    procs.stop(alive, timeout=timeout)
    for path in (workdir / EXEC_DIR).glob("*.json"):
        path.unlink(missing_ok=True)
    return alive
