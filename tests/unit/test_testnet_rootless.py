"""Rootless namespaces: a holder process keeps a user + network namespace; others join it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from puretor.testnet import layout, netns, procs
from puretor.testnet.network import _python_env


def test_nsenter_command_line() -> None:
    assert netns.nsenter_argv(4242, ["tor", "-f", "x"]) == [
        "nsenter",
        "--target=4242",
        "--user",
        "--net",
        "--preserve-credentials",  # nsenter's setgroups() is denied in our user namespace
        "--",
        "tor",
        "-f",
        "x",
    ]


def test_wrap_joins_the_holder_unless_already_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "is_sealed", lambda name=None: True)
    assert netns.wrap(None, ["curl", "x"], holder_pid=os.getpid()) == ["curl", "x"]
    # Same namespace as the "holder" but not sealed: its PID was reused out here. Never run
    # unwrapped then (nsenter fails: one cannot join one's own user namespace).
    monkeypatch.setattr(netns, "is_sealed", lambda name=None: False)
    assert netns.wrap(None, ["curl"], holder_pid=os.getpid()) == netns.nsenter_argv(
        os.getpid(), ["curl"]
    )
    monkeypatch.setattr(netns, "shares_netns", lambda pid: False)
    assert netns.wrap(None, ["curl", "x"], holder_pid=77) == netns.nsenter_argv(77, ["curl", "x"])
    assert netns.wrap("ignored", ["curl"], holder_pid=77)[0] == "nsenter"  # the holder wins


def test_namespace_membership() -> None:
    mine = netns.netns_id("self")
    assert mine is not None
    assert os.getpid() in netns.pids_in_netns(mine)
    assert netns.netns_id(2**22 + 1) is None  # above pid_max: no such process


def test_holder_makes_a_sealed_namespace_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    holder = procs.spawn(
        "holder",
        [sys.executable, "-m", "puretor.testnet", "hold-netns", "--ready", str(ready)],
        log=tmp_path / "log",
        env=_python_env(),
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            if not procs.is_alive(holder):
                log = (tmp_path / "log").read_text()
                if "unshare" in log:  # e.g. AppArmor's restrict_unprivileged_userns
                    pytest.skip(f"no user namespaces here: {log.strip().splitlines()[-1]}")
                pytest.fail(f"holder died:\n{log}")
            assert time.monotonic() < deadline, "holder not ready"
            time.sleep(0.02)
        assert ready.read_text().strip() == str(holder.pid)
        assert netns.netns_id(holder.pid) != netns.netns_id("self")

        def inside(*argv: str) -> str:
            return subprocess.run(
                netns.wrap(None, argv, holder_pid=holder.pid),
                capture_output=True,
                text=True,
                check=True,
                timeout=20,
            ).stdout

        devices = [
            line.split(":")[0].strip() for line in inside("cat", "/proc/net/dev").splitlines()[2:]
        ]
        assert devices == ["lo"]
        assert f"local {layout.LOCAL_TARGET_NET}" in inside("ip", "route", "show", "table", "local")
        assert inside("id", "-u").strip() == "0"  # root of its own user namespace
        procs.stop([holder], timeout=5)
        assert not procs.is_alive(holder)
    finally:
        procs.stop([holder])
