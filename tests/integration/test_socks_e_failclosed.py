"""Fail-closed, statically: in the client, only ``aio/channel.py`` opens outbound connections
(to relays' ORPorts), and nothing resolves names locally. Every other way out - asyncio's
``create_connection``/``open_connection``, sockets, ``getaddrinfo``, HTTP client libraries,
subprocesses - is absent from ``src/puretor`` (outside the tools: ``testnet/`` and ``bench/``,
which the client never imports). ``httpx_transport.py`` may use httpx/httpcore, but only with
puretor's Tor network backend.

The dynamic half - no target ever saw a direct connection - is the last test of
``test_socks_zz_exit_kill.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import puretor

SRC = Path(puretor.__file__).resolve().parent
TOOLS = ("testnet", "bench")  # not the client: the private network launcher, benchmarks
OPENER = "aio/channel.py"  # the one module that connects (TLS to relays)
HTTPX_GLUE = "httpx_transport.py"

# Calls that open a connection, a listener-less socket, or resolve a name.
NETWORK_CALLS = frozenset(
    {
        "create_connection",
        "open_connection",
        "create_unix_connection",
        "open_unix_connection",
        "create_datagram_endpoint",
        "sock_connect",
        "connect",
        "connect_ex",
        "getaddrinfo",
        "getnameinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "urlopen",
        "urlretrieve",
        "system",
        "popen",
        "spawnl",
        "spawnv",
        "execv",
        "execvp",
    }
)
# puretor's own stream API has the asyncio names: allowed on a Tor client object.
TOR_API = frozenset({"create_connection", "open_connection"})
TOR_RECEIVERS = frozenset({"self", "self.tor", "tor", "self._tor"})
# Modules that talk to the network (or run programs that could) on their own.
FORBIDDEN_MODULES = (
    "socket",
    "urllib.request",
    "http.client",
    "httpx",
    "httpcore",
    "requests",
    "aiohttp",
    "urllib3",
    "websockets",
    "ftplib",
    "smtplib",
    "telnetlib",
    "xmlrpc.client",
    "subprocess",
    "asyncio.subprocess",
)
# httpcore objects that open connections unless given puretor's network backend.
HTTPCORE_POOLS = frozenset(
    {"AsyncConnectionPool", "ConnectionPool", "AsyncHTTPConnection", "HTTPConnection"}
)


def _relpath(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def client_sources() -> Iterator[Path]:
    for path in sorted(SRC.rglob("*.py")):
        if _relpath(path).split("/")[0] not in TOOLS:
            yield path


def violations(source: str, rel: str) -> list[str]:
    """Every way out of the process in `source` that `rel` may not use."""
    tree = ast.parse(source, rel)
    found: list[str] = []
    allowed_modules = {"httpx", "httpcore"} if rel == HTTPX_GLUE else set()

    def where(node: ast.AST) -> str:
        return f"{rel}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            )
            for name in names:
                for mod in FORBIDDEN_MODULES:
                    if (name == mod or name.startswith(mod + ".")) and mod not in allowed_modules:
                        if mod == "socket" and rel == OPENER:
                            continue
                        found.append(f"{where(node)}: imports {name}")
            if isinstance(node, ast.ImportFrom) and node.module in ("asyncio", "os", "socket"):
                for a in node.names:
                    if a.name in NETWORK_CALLS:
                        found.append(f"{where(node)}: imports {node.module}.{a.name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            # (A bare name like `connect()` is a local function unless imported from a
            # network module, and such imports are reported above.)
            func = node.func
            name, receiver = func.attr, ast.unparse(func.value)
            if name in NETWORK_CALLS:
                if name in TOR_API and receiver in TOR_RECEIVERS:
                    continue  # puretor's TorClient API: a Tor stream
                if rel == OPENER and name == "create_connection" and receiver == "loop":
                    continue
                found.append(f"{where(node)}: calls {ast.unparse(func)}()")
            elif name == "socket" and receiver == "socket":
                found.append(f"{where(node)}: calls socket.socket()")
            elif name in HTTPCORE_POOLS and not any(
                k.arg == "network_backend" for k in node.keywords
            ):
                found.append(f"{where(node)}: {name} without puretor's network_backend")
            elif (
                name in ("Client", "AsyncClient")
                and receiver == "httpx"
                and not any(k.arg == "transport" for k in node.keywords)
            ):
                found.append(f"{where(node)}: httpx.{name} without a Tor transport")
    return found


def test_only_channel_py_opens_connections() -> None:
    found: list[str] = []
    scanned = 0
    for path in client_sources():
        found += violations(path.read_text(), _relpath(path))
        scanned += 1
    assert scanned > 30, f"scanned only {scanned} files under {SRC}"
    assert not found, "outbound connections outside aio/channel.py:\n" + "\n".join(found)


def test_channel_py_is_the_opener() -> None:
    # The scan above is only meaningful if it sees the one legitimate connect.
    source = (SRC / OPENER).read_text()
    calls = [
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "create_connection"
    ]
    assert calls, "aio/channel.py no longer calls loop.create_connection: update this test"
    assert violations(source, "aio/other.py"), "the scanner does not see channel.py's connect"


def test_tools_are_not_imported_by_the_client() -> None:
    # The scan skips testnet/ and bench/; that is only sound while the client never uses them.
    found = []
    for path in client_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for mod in mods:
                if any(mod == f"puretor.{t}" or mod.startswith(f"puretor.{t}.") for t in TOOLS):
                    found.append(f"{_relpath(path)}:{node.lineno}: imports {mod}")
    assert not found, "\n".join(found)


SNIPPETS = [
    "import socket\ns = socket.socket()\n",
    "from socket import create_connection\n",
    "import asyncio\nasync def f(): await asyncio.open_connection('h', 1)\n",
    "async def f(loop): await loop.create_connection(lambda: None, 'h', 1)\n",
    "async def f(self): await self._loop.create_connection(lambda: None, 'h', 1)\n",
    "async def f(loop): await loop.getaddrinfo('h', 1)\n",
    "async def f(loop, s): await loop.sock_connect(s, ('h', 1))\n",
    "def f(s): s.connect(('h', 1))\n",
    "import urllib.request\nurllib.request.urlopen('http://h/')\n",
    "import http.client\n",
    "import httpx\nhttpx.get('http://h/')\n",
    "import subprocess\n",
    "import os\nos.system('curl h')\n",
    "from asyncio import open_connection\n",
    "from socket import socket\n",
    "from os import system\n",
    "import httpx\nc = httpx.AsyncClient()\n",
]


def test_scanner_catches_every_pattern() -> None:
    for snippet in SNIPPETS:
        assert violations(snippet, "somewhere.py"), f"not caught: {snippet!r}"
    # ...and not the Tor API, nor httpx glue that plugs in Tor.
    assert not violations("async def f(self): await self.tor.open_connection('h', 1)\n", "x.py")
    glue = "import httpcore\np = httpcore.AsyncConnectionPool(network_backend=B())\n"
    assert not violations(glue, HTTPX_GLUE)
    assert violations("import httpcore\np = httpcore.AsyncConnectionPool()\n", HTTPX_GLUE)
