"""The dual-stack relays' IPv6 ORPort addresses: put on ``lo`` of the network's namespace, or,
where that cannot be done (IPv6 disabled), an IPv4-only network instead of a broken one."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from puretor.testnet import netns, procs
from puretor.testnet.layout import NetworkPlan
from puretor.testnet.network import TestNetwork, _python_env


def test_addresses_go_on_lo_inside_the_namespace(tmp_path: Path) -> None:
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
        net = TestNetwork(tmp_path / "net", rootless=True)
        net.holder = holder
        said: list[str] = []
        assert net._add_ipv6_addresses(said.append), said
        assert net._add_ipv6_addresses(said.append), said  # again: no "File exists"
        address = net.plan.ipv6_addresses[0]
        # Bindable at once (no duplicate address detection).
        probe = f"import socket; socket.socket(socket.AF_INET6).bind(({address!r}, 0))"
        inside = subprocess.run(
            netns.wrap(None, [sys.executable, "-c", probe], holder_pid=holder.pid),
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert inside.returncode == 0, inside.stderr
        shown = subprocess.run(
            netns.wrap(None, ["ip", "-6", "addr", "show", "dev", "lo"], holder_pid=holder.pid),
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout
        assert all(f"{a}/128" in shown for a in net.plan.ipv6_addresses), shown
    finally:
        procs.stop([holder])


def test_no_ipv6_in_the_namespace_means_ipv4_orports_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = TestNetwork(tmp_path)

    def no_ipv6(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 2, "", "RTNETLINK answers: Permission denied")

    monkeypatch.setattr(net, "run", no_ipv6)
    said: list[str] = []
    assert not net._add_ipv6_addresses(said.append)
    assert said and "no IPv6 ORPorts" in said[0] and "Permission denied" in said[0]
    plan = NetworkPlan().without_ipv6()
    assert not plan.ipv6_addresses and all(n.ipv6_orport is None for n in plan.nodes)
