"""Commands run with `testnet exec` are recorded by PID and start time, so `down` stops exactly
them: never a process that merely got a recycled PID."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from puretor.testnet import execs, procs
from puretor.testnet.network import _python_env

# What `exec` does: record itself, then become the command (same PID, same start time).
_RECORD_THEN_EXEC = (
    "import os, sys; from pathlib import Path; from puretor.testnet import execs; "
    "execs.record_self(Path(sys.argv[1]), ['sleep', '30']); os.execvp('sleep', ['sleep', '30'])"
)


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_record_survives_exec_and_stop_all_stops_the_command(tmp_path: Path) -> None:
    rec = procs.spawn(
        "execer",
        [sys.executable, "-c", _RECORD_THEN_EXEC, str(tmp_path)],
        log=tmp_path / "log",
        env=_python_env(),
    )
    try:
        _wait_until(lambda: procs.cmdline(rec.pid) == "sleep 30")
        (recorded,) = execs.running(tmp_path)
        assert (recorded.pid, recorded.starttime, recorded.argv) == (
            rec.pid,
            rec.starttime,
            ["sleep", "30"],
        )
        started = time.monotonic()
        assert execs.stop_all(tmp_path, timeout=5) == [recorded]
        assert not procs.is_alive(rec)
        assert time.monotonic() - started < 3  # SIGTERM was enough
        assert execs.recorded(tmp_path) == []
    finally:
        procs.stop([rec])


def test_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    bystander = procs.spawn("bystander", ["sleep", "30"], log=tmp_path / "log")
    try:
        # An old record whose PID now belongs to another process (different start time).
        stale = procs.ProcRecord("exec", bystander.pid, bystander.starttime - 1, ["x"], "")
        (tmp_path / execs.EXEC_DIR).mkdir()
        (tmp_path / execs.EXEC_DIR / f"{stale.pid}.json").write_text(json.dumps(stale.to_json()))
        assert execs.recorded(tmp_path) == [stale]
        assert execs.running(tmp_path) == []
        assert execs.stop_all(tmp_path, timeout=1) == []
        assert procs.is_alive(bystander)
        assert execs.recorded(tmp_path) == []  # forgotten all the same
    finally:
        procs.stop([bystander])


def test_record_self_round_trip_and_unreadable_records(tmp_path: Path) -> None:
    path = execs.record_self(tmp_path, ["curl", "http://target.test/ip"])
    assert path == tmp_path / execs.EXEC_DIR / f"{os.getpid()}.json"
    (tmp_path / execs.EXEC_DIR / "junk.json").write_text("{not json")
    (mine,) = execs.recorded(tmp_path)
    assert mine == procs.record_of("exec", os.getpid(), ["curl", "http://target.test/ip"])
    assert execs.running(tmp_path) == [mine]
