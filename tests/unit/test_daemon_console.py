"""What a newcomer sees on the terminal: start-up errors and a stuck bootstrap reach stderr.

A real ``tor-client`` process in the suite's sealed namespace: the public authorities are
unreachable there (ENETUNREACH), which is what an offline or blocked machine sees.  The
torrc logs to a file only, as the private network's client.torrc does.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOR_CLIENT = [sys.executable, "-m", "puretor.cli"]


def _torrc(tmp_path: Path, socks: str) -> Path:
    torrc = tmp_path / "torrc"
    torrc.write_text(
        f"SocksPort {socks}\nDataDirectory {tmp_path / 'data'}\n"
        f"Log notice file {tmp_path / 'notices.log'}\n"
    )
    return torrc


def _stderr_until(proc: subprocess.Popen[bytes], needle: str, timeout: float) -> list[str]:
    """Lines of ``proc``'s stderr up to the one containing ``needle`` (or all, at timeout)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    text = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and needle not in text:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)  # raw reads: a buffered reader would hide lines
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    return text.splitlines()


@pytest.mark.options("Log")
def test_a_blocked_network_says_problem_bootstrapping_on_the_terminal(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.Popen(
        [*TOR_CLIENT, "-f", str(_torrc(tmp_path, "127.0.0.1:auto"))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        lines = _stderr_until(proc, "connections died in state", timeout=30)
        took = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    problem = [line for line in lines if "Problem bootstrapping" in line]
    assert problem, f"no 'Problem bootstrapping' within 30 s; stderr: {lines}"
    assert took < 30
    # C tor's words: where it is stuck, the reason, and the host it tried.
    assert "[warn] Problem bootstrapping. Stuck at 5% (conn): Connecting to a relay." in problem[0]
    assert "Network is unreachable; NOROUTE; count 1; recommendation warn; host " in problem[0]
    assert any("connections died in state connect()ing" in line for line in lines)
    # The log file has it too (the terminal is in addition, not instead).
    assert "Problem bootstrapping" in (tmp_path / "notices.log").read_text()


@pytest.mark.options("SocksPort")
def test_a_port_in_use_is_one_line_on_stderr_and_a_nonzero_exit(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*TOR_CLIENT, "-f", str(_torrc(tmp_path, f"127.0.0.1:{port}"))],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"[err] Could not bind to 127.0.0.1:{port}: Address already in use." in lines[0]
    assert proc.stdout == ""


@pytest.mark.options("Log")
def test_console_lines_stop_once_logging_goes_to_the_terminal_anyway(tmp_path: Path) -> None:
    """With a Log line on stdout there is no second copy on stderr."""
    torrc = tmp_path / "torrc"
    torrc.write_text(f"SocksPort auto\nDataDirectory {tmp_path / 'd'}\nLog notice stdout\n")
    proc = subprocess.Popen(
        [*TOR_CLIENT, "-f", str(torrc)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert "Problem bootstrapping" in out
    assert "Problem bootstrapping" not in err


def test_verify_install_prints_the_versions_and_passes() -> None:
    proc = subprocess.run(
        [*TOR_CLIENT, "--verify-install"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import cryptography
    import nacl

    assert cryptography.__version__ in proc.stdout and nacl.__version__ in proc.stdout
    assert "FAILED" not in proc.stdout


@pytest.mark.options("DataDirectory")
@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_someone_elses_data_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    proc = subprocess.run(
        [*TOR_CLIENT, "--SocksPort", "auto", "--DataDirectory", str(theirs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "is not owned by this user" in proc.stdout + proc.stderr
    assert "DataDirectory" in proc.stdout + proc.stderr
