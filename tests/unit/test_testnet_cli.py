"""The `puretor-testnet` command: where `up` runs, state.json, and `down` stopping `exec`s."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puretor.testnet import __main__ as cli
from puretor.testnet import execs, layout, procs
from puretor.testnet.network import HOLDER, TestNetwork, _python_env
from puretor.testnet.procs import ProcRecord


@pytest.mark.parametrize(
    ("argv", "euid", "expected"),
    [
        ([], 0, (layout.DEFAULT_NETNS, False)),  # root: named namespace, as CI uses
        ([], 1000, (None, True)),  # anyone else: rootless
        (["--rootless"], 0, (None, True)),
        (["--netns", "mine"], 0, ("mine", False)),
        (["--current-netns"], 1000, (None, False)),
    ],
)
def test_where_up_runs(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], euid: int, expected: tuple[str | None, bool]
) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: euid)
    assert cli._namespace_choice(cli.build_parser().parse_args(["up", *argv])) == expected


def test_up_refuses_contradictory_places() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up", "--rootless", "--netns", "x"])


def test_a_program_beside_our_python_is_found_when_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tor-client-test-only").write_text("")
    monkeypatch.setattr(cli.sys, "executable", str(tmp_path / "python"))
    assert cli._resolve(["tor-client-test-only", "-f", "x"]) == [
        str(tmp_path / "tor-client-test-only"),
        "-f",
        "x",
    ]
    assert cli._resolve(["sh", "-c", "true"]) == ["sh", "-c", "true"]  # on PATH: unchanged
    assert cli._resolve(["./local"]) == ["./local"]


def test_state_json_round_trip(tmp_path: Path) -> None:
    net = TestNetwork(tmp_path, rootless=True)
    net.holder = ProcRecord(HOLDER, 11, 22, ["python", "-m", "puretor.testnet"], "h.log")
    net.records = {"auth1": ProcRecord("auth1", 33, 44, ["tor", "-f", "torrc"], "a.log")}
    net._write_state()
    again = TestNetwork.attach(tmp_path)
    assert (again.netns, again.rootless, again.holder) == (None, True, net.holder)
    assert again.records == net.records
    # A state file from before rootless networks existed.
    state = json.loads((tmp_path / "state.json").read_text())
    del state["holder"]
    state["netns"] = "puretor-testnet"
    (tmp_path / "state.json").write_text(json.dumps(state))
    old = TestNetwork.attach(tmp_path)
    assert (old.netns, old.rootless, old.holder) == ("puretor-testnet", False, None)


def _run_cli(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "puretor.testnet", *argv],
        env=_python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_down_stops_what_exec_started(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A network "in the launcher's namespace" with no processes: only the exec matters here.
    (tmp_path / "state.json").write_text(json.dumps({"netns": None, "processes": {}}))
    proc = _run_cli("exec", "--dir", str(tmp_path), "--", "sleep", "30")
    try:
        deadline = time.monotonic() + 10
        while procs.cmdline(proc.pid) != "sleep 30":
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "exec did not become `sleep 30`"
            time.sleep(0.02)
        (rec,) = execs.running(tmp_path)
        assert rec.pid == proc.pid  # exec replaced itself: the PID is the command's
        assert cli.main(["status", "--dir", str(tmp_path)]) == 0
        assert f"pid {proc.pid}" in capsys.readouterr().out
        assert cli.main(["down", "--dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "1 run with `exec`" in out and f"exec pid {proc.pid}: sleep 30" in out
        assert proc.wait(timeout=5) == -15  # SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_exec_refuses_when_the_holder_is_gone(tmp_path: Path) -> None:
    gone = ProcRecord(HOLDER, 2**22 + 1, 1, ["python"], "")  # above pid_max: never alive
    state = {"netns": None, "holder": gone.to_json(), "processes": {}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    proc = _run_cli("exec", "--dir", str(tmp_path), "--", "echo", "ran")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "gone" in out and "ran" not in out
    assert execs.recorded(tmp_path) == []


def test_exec_of_a_missing_program_leaves_no_record(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"netns": None, "processes": {}}))
    proc = _run_cli("exec", "--dir", str(tmp_path), "--", "no-such-program-here")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 127, out
    assert execs.recorded(tmp_path) == []
