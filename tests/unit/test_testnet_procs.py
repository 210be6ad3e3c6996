"""Process control: we only ever signal the exact process we started."""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import pytest

from puretor.testnet import procs


def test_spawn_stop(tmp_path: Path) -> None:
    rec = procs.spawn("sleeper", ["sleep", "30"], log=tmp_path / "log")
    assert procs.is_alive(rec)
    started = time.monotonic()
    procs.stop([rec], timeout=5)
    assert not procs.is_alive(rec)
    assert time.monotonic() - started < 3


def test_sigkill_after_timeout(tmp_path: Path) -> None:
    rec = procs.spawn(
        "stubborn", ["sh", "-c", "trap '' TERM; echo ready; sleep 30"], log=tmp_path / "log"
    )
    while b"ready" not in (tmp_path / "log").read_bytes():
        time.sleep(0.01)
    procs.stop([rec], timeout=0.5)
    assert not procs.is_alive(rec)


def test_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    rec = procs.spawn("sleeper", ["sleep", "30"], log=tmp_path / "log")
    try:
        impostor = dataclasses.replace(rec, starttime=rec.starttime + 1)
        assert not procs.is_alive(impostor)
        assert not procs.signal_proc(impostor, 15)
        assert procs.is_alive(rec)
    finally:
        procs.stop([rec])


def test_record_json_round_trip(tmp_path: Path) -> None:
    rec = procs.spawn("true", ["true"], log=tmp_path / "log")
    assert procs.ProcRecord.from_json(rec.to_json()) == rec
    procs.stop([rec])


def test_stop_resumes_a_paused_process(tmp_path: Path) -> None:
    rec = procs.spawn("sleeper", ["sleep", "30"], log=tmp_path / "log")
    procs.signal_proc(rec, signal.SIGSTOP)
    started = time.monotonic()
    procs.stop([rec], timeout=5)
    assert not procs.is_alive(rec)
    assert time.monotonic() - started < 3  # SIGTERM worked; no wait for SIGKILL


def test_record_of_an_existing_process_and_its_command_line(tmp_path: Path) -> None:
    rec = procs.spawn("sleeper", ["sleep", "30"], log=tmp_path / "log")
    try:
        assert procs.record_of("again", rec.pid, ["sleep", "30"]).starttime == rec.starttime
        deadline = time.monotonic() + 10
        while procs.cmdline(rec.pid) != "sleep 30":  # empty or python's until the exec
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        procs.stop([rec])
    assert procs.cmdline(rec.pid) == ""
    with pytest.raises(ProcessLookupError):
        procs.record_of("gone", rec.pid, [])
