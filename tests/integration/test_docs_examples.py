"""The examples in docs/guide.md run, against the private network.

Fenced blocks whose info string is ``python run`` are executed; the one marked
``python run setup`` (section "Running against the private network") defines the names
the others use (``config``, ``TARGET``, ``TLS_TARGET``, ``CA_FILE``, ``IP_URL``,
``ONION``) from network.json.  It names ``/tmp/ptnet/network.json`` and a DataDirectory
``/tmp/ptnet-client``; the test substitutes the session network's file and a temporary
directory - the only changes made to the documented code.  Each example runs in a fresh
namespace seeded by the setup block, as a reader would run it after that block.

The ``torrc`` block of the daemon section is run too: ``tor-client -f`` with it (plus the
network's DirAuthority lines), then a SOCKS5 request through it.  Plain ``python`` blocks
must at least compile.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_library_api import forbid_local_dns, wait_until_exits_serve

pytestmark = pytest.mark.timeout(400)  # includes the network start

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^#{2,3} (.+)$", re.M)

NETWORK_JSON = "/tmp/ptnet/network.json"
DATA_DIRECTORY = "/tmp/ptnet-client"
DAEMON_LISTEN = "127.0.0.1:9150"
DAEMON_DATA = "/tmp/ptnet-daemon"


@dataclass(frozen=True)
class Block:
    info: str  # the fence's info string, e.g. "python run"
    code: str
    line: int  # line of the block's first code line in guide.md
    heading: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{slug}-L{self.line}"


def guide_blocks() -> list[Block]:
    text = GUIDE.read_text(encoding="utf-8")
    headings = [(m.start(), m.group(1)) for m in _HEADING.finditer(text)]
    out = []
    for m in _FENCE.finditer(text):
        heading = next((h for pos, h in reversed(headings) if pos < m.start()), "top")
        line = text.count("\n", 0, m.start(2)) + 1
        out.append(Block(m.group(1).strip(), m.group(2), line, heading))
    return out


BLOCKS = guide_blocks()
SETUP = [b for b in BLOCKS if b.info == "python run setup"]
EXAMPLES = [b for b in BLOCKS if b.info == "python run"]
TORRC = [b for b in BLOCKS if b.info == "torrc"]


def _compiled(block: Block, code: str | None = None) -> Any:
    # Pad so that tracebacks show guide.md's own line numbers.
    source = "\n" * (block.line - 1) + (code if code is not None else block.code)
    return compile(source, str(GUIDE), "exec")


def test_guide_has_runnable_examples_and_every_python_block_compiles() -> None:
    assert len(SETUP) == 1, "exactly one 'python run setup' block"
    assert len(EXAMPLES) >= 10, [b.id for b in EXAMPLES]
    assert len(TORRC) == 1
    for block in BLOCKS:
        if block.info.split()[:1] == ["python"]:
            _compiled(block)
    setup = SETUP[0].code
    for placeholder in (NETWORK_JSON, DATA_DIRECTORY):
        assert placeholder in setup, f"the setup block no longer names {placeholder}"


def _setup_namespace(testnet: Any, data_dir: Path) -> dict[str, Any]:
    network_json = Path(testnet.info["workdir"]) / "network.json"
    assert network_json.exists()
    code = SETUP[0].code.replace(NETWORK_JSON, str(network_json))
    code = code.replace(DATA_DIRECTORY, str(data_dir))
    namespace: dict[str, Any] = {"__name__": "guide_example"}
    exec(_compiled(SETUP[0], code), namespace)
    for name in ("config", "TARGET", "TLS_TARGET", "CA_FILE", "IP_URL", "ONION"):
        assert name in namespace, f"the setup block does not define {name}"
    return namespace


@pytest.fixture(scope="module")
def guide_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by the examples, as for a reader: the first one fills the cache.
    return tmp_path_factory.mktemp("guide-data")


@pytest.fixture
def network(
    testnet: Any, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The session network, with both exits serving, and no local DNS during the test."""
    wait_until_exits_serve(testnet.info, tmp_path_factory.mktemp("exits-ready"))
    asked = forbid_local_dns(monkeypatch)
    yield testnet
    assert not asked, f"names resolved locally: {asked}"


@pytest.mark.parametrize("block", EXAMPLES, ids=[b.id for b in EXAMPLES])
def test_guide_example(
    block: Block, network: Any, guide_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = _setup_namespace(network, guide_data_dir)
    t0 = time.monotonic()
    exec(_compiled(block), namespace)
    out = capsys.readouterr().out
    print(f"[{block.id}: {time.monotonic() - t0:.2f}s]\n{out}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _socks5_get(port: int, host: str, path: str) -> bytes:
    """HTTP/1.0 GET through a SOCKS5 proxy, the name sent to the proxy (ATYP 3)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        name = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + (80).to_bytes(2, "big"))
        reply = s.recv(4)
        assert reply[:2] == b"\x05\x00", reply
        rest = {1: 4, 4: 16}.get(reply[3], 0) + 2
        if reply[3] == 3:
            rest = s.recv(1)[0] + 2
        s.recv(rest)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_guide_daemon_torrc(network: Any, tmp_path: Path) -> None:
    info = network.info
    block = TORRC[0]
    assert DAEMON_LISTEN in block.code and DAEMON_DATA in block.code
    port = _free_port()
    torrc = block.code.replace(DAEMON_LISTEN, f"127.0.0.1:{port}")
    torrc = torrc.replace(DAEMON_DATA, str(tmp_path / "daemon-data"))
    torrc += "\n".join(info["dir_authority_lines"]) + "\n"
    path = tmp_path / "puretor.torrc"
    path.write_text(torrc)

    proc = subprocess.Popen(
        [sys.executable, "-m", "puretor.cli", "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            text = "".join(lines)
            if "Bootstrapped 100%" in text and "Opened Socks listener" in text:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(90), "".join(lines)[-3000:]
        target = info["targets"]["hostname"]
        answer = _socks5_get(port, target, "/")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        if shutil.which("curl"):  # the guide's command, verbatim but for the port
            curl = subprocess.run(
                ["curl", "-sS", "--max-time", "60", "--socks5-hostname"]
                + [f"127.0.0.1:{port}", f"http://{target}/"],
                capture_output=True,
                timeout=90,
            )
            assert curl.returncode == 0, curl.stderr
            assert curl.stdout.startswith(b"puretor testnet")
        # SafeLogging 1: the destination never reaches the log.
        assert target not in "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "".join(lines)[-2000:]
