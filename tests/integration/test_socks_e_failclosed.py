"""Fail-closed, statically: in the client, only ``aio/channel.py`` opens outbound connections
(to relays' ORPorts), and nothing resolves names locally. Every other way out - asyncio's
``create_connection``/``open_connection``, sockets, ``getaddrinfo``, HTTP client libraries,
subprocesses - is absent from ``src/puretor`` (outside the tools: ``testnet/`` and ``bench/``,
which the client never imports). httpx/httpcore may be used only with puretor's Tor transport
or network backend (``httpx_transport.py``, the sync facade).

puretor's own stream API shares asyncio's names (``TorClient.create_connection``,
``open_connection``): such a call is allowed only on an object the module itself shows to be a
TorClient (``self``, a parameter or attribute annotated or assigned as one, what a function
annotated ``-> TorClient`` returns) - anything else, e.g. ``loop.create_connection``, is a
finding.

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
# Connections that are not to the Tor network, each for one reason, and nothing else:
LOCAL_CONNECTS = {
    # A pluggable transport's own SOCKS port, or the configured Socks4/Socks5/HTTPS proxy:
    # each socket is handed to aio/channel.py as its `connector`, so only a channel to an
    # allowed relay or bridge ever runs over it (tests/integration/test_bridges.py audits it).
    "aio/pt.py": {"imports socket", "calls socket.socket()", "calls loop.sock_connect()"},
    "aio/proxy.py": {"imports socket", "calls socket.socket()", "calls loop.sock_connect()"},
    # (`socket` only for type annotations, under TYPE_CHECKING.)
    "client.py": {"imports socket", "calls self._pts.connect()", "calls self._proxy.connect()"},
    "aio/channel.py": {"imports socket"},
    # An onion service forwards the streams it accepts to its HiddenServicePort targets,
    # which the operator configured (C tor connects to them the same way).
    "aio/hsservice.py": {
        "calls asyncio.open_connection()",
        "calls asyncio.open_unix_connection()",
    },
}

# Calls that open a connection, resolve a name, or run a program.
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
TOR_API = frozenset({"create_connection", "open_connection"})
TOR_CLIENT_TYPES = frozenset({"TorClient", "AsyncTorClient"})
# Modules that talk to the network (or run programs that could) on their own.
FORBIDDEN_MODULES = (
    "socket",
    "urllib.request",
    "http.client",
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
# httpx: clients only with a transport (ours); no module-level request helpers; no
# transports of its own (they connect directly). httpcore: pools only with our backend.
HTTPX_REQUEST_HELPERS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "request", "stream"}
)
HTTPX_DIRECT_TRANSPORTS = frozenset({"HTTPTransport", "AsyncHTTPTransport"})
HTTPCORE_CONNECTORS = frozenset(
    {
        "AsyncConnectionPool",
        "ConnectionPool",
        "AsyncHTTPConnection",
        "HTTPConnection",
        "AsyncHTTPProxy",
        "HTTPProxy",
        "AsyncSOCKSProxy",
        "SOCKSProxy",
        "AsyncHTTP11Connection",
        "HTTP11Connection",
    }
)


def _relpath(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def client_sources() -> Iterator[Path]:
    for path in sorted(SRC.rglob("*.py")):
        if _relpath(path).split("/")[0] not in TOOLS:
            yield path


def _mentions_tor_client(annotation: ast.AST | None, types: set[str]) -> bool:
    if annotation is None:
        return False
    for n in ast.walk(annotation):
        if isinstance(n, ast.Name) and n.id in types:
            return True
        if isinstance(n, ast.Attribute) and n.attr in types:
            return True
        if (
            isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and any(t in n.value for t in types)
        ):
            return True
    return False


def tor_client_objects(tree: ast.AST) -> set[str]:
    """Expressions (as source text) that the module shows to be TorClients."""
    types = set(TOR_CLIENT_TYPES)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("puretor"):
            types |= {a.asname for a in node.names if a.name == "TorClient" and a.asname}
    known = {"self"}  # a wrapper's own method; what it calls inside is checked in turn
    if any(
        isinstance(n, ast.ImportFrom)
        and n.module == "puretor.app.proxied"
        and any(a.name == "ProxiedConnection" for a in n.names)
        for n in ast.walk(tree)
    ):
        known.add("self.tor")  # ProxiedConnection's TorClient (app/proxied.py)
    for _ in range(3):  # assignments from known objects, to a fixpoint
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and _mentions_tor_client(node.annotation, types):
                known.add(node.arg)
            elif isinstance(node, ast.AnnAssign) and _mentions_tor_client(node.annotation, types):
                known.add(ast.unparse(node.target))
            elif isinstance(node, ast.Assign):
                value = node.value
                is_tor = ast.unparse(value) in known or (
                    isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] in types
                )
                if is_tor:
                    known |= {ast.unparse(t) for t in node.targets}
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _mentions_tor_client(
                node.returns, types
            ):
                known |= {
                    ast.unparse(r.value)
                    for r in ast.walk(node)
                    if isinstance(r, ast.Return) and r.value is not None
                }
    return known


DNS_LISTENER = "app/dnsport.py"


def _has_kw(node: ast.Call, name: str) -> bool:
    return any(k.arg == name for k in node.keywords)


def violations(source: str, rel: str) -> list[str]:
    """Every way out of the process in `source` that `rel` may not use."""
    tree = ast.parse(source, rel)
    found: list[str] = []
    tor_objects = tor_client_objects(tree)

    def where(node: ast.AST) -> str:
        return f"{rel}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                for mod in FORBIDDEN_MODULES:
                    if name == mod or name.startswith(mod + "."):
                        found.append(f"{where(node)}: imports {name}")
            if isinstance(node, ast.ImportFrom) and node.module in ("asyncio", "os", "socket"):
                found += [
                    f"{where(node)}: imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name in NETWORK_CALLS
                ]
            if isinstance(node, ast.ImportFrom) and node.module in ("httpx", "httpcore"):
                found += [
                    f"{where(node)}: imports {node.module}.{a.name} (use it as {node.module}.X)"
                    for a in node.names
                    if a.name
                    in HTTPX_REQUEST_HELPERS
                    | HTTPX_DIRECT_TRANSPORTS
                    | HTTPCORE_CONNECTORS
                    | {"Client", "AsyncClient"}
                ]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            # (A bare name like `connect()` is a local function unless imported from a
            # network module, and such imports are reported above.)
            func = node.func
            name, receiver = func.attr, ast.unparse(func.value)
            call = f"{receiver}.{name}()"
            if name in NETWORK_CALLS:
                if name in TOR_API and receiver in tor_objects:
                    continue  # puretor's TorClient API: a Tor stream
                if rel == OPENER and name == "create_connection" and receiver == "loop":
                    continue
                if (
                    rel == DNS_LISTENER
                    and name == "create_datagram_endpoint"
                    and _has_kw(node, "local_addr")
                    and not _has_kw(node, "remote_addr")
                ):
                    continue  # DNSPort's listening socket: it only answers who asked
                found.append(f"{where(node)}: calls {call}")
            elif name == "socket" and receiver == "socket":
                found.append(f"{where(node)}: calls {call}")
            elif receiver == "httpx" and (
                name in HTTPX_REQUEST_HELPERS | HTTPX_DIRECT_TRANSPORTS
                or (name in ("Client", "AsyncClient") and not _has_kw(node, "transport"))
            ):
                found.append(f"{where(node)}: calls {call} without a Tor transport")
            elif (
                receiver == "httpcore"
                and name in HTTPCORE_CONNECTORS
                and not _has_kw(node, "network_backend")
            ):
                found.append(f"{where(node)}: calls {call} without puretor's network backend")
    return found


def test_only_channel_py_opens_connections() -> None:
    found: list[str] = []
    scanned = 0
    for path in client_sources():
        rel = _relpath(path)
        allowed = LOCAL_CONNECTS.get(rel, set())
        found += [
            v for v in violations(path.read_text(), rel) if v.split(": ", 1)[1] not in allowed
        ]
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
    "from socket import socket\n",
    "import asyncio\nasync def f(): await asyncio.open_connection('h', 1)\n",
    "from asyncio import open_connection\n",
    "async def f(loop): await loop.create_connection(lambda: None, 'h', 1)\n",
    "async def f(self): await self._loop.create_connection(lambda: None, 'h', 1)\n",
    "async def f(self): await self._aio.open_connection('h', 1)\n",  # not shown to be Tor
    "async def f(loop): await loop.getaddrinfo('h', 1)\n",
    "async def f(loop, s): await loop.sock_connect(s, ('h', 1))\n",
    "def f(s): s.connect(('h', 1))\n",
    "import urllib.request\nurllib.request.urlopen('http://h/')\n",
    "import http.client\n",
    "import subprocess\n",
    "import os\nos.system('curl h')\n",
    "from os import system\n",
    "import httpx\nhttpx.get('http://h/')\n",
    "import httpx\nc = httpx.AsyncClient()\n",
    "import httpx\nc = httpx.Client(transport=httpx.HTTPTransport())\n",
    "from httpx import Client\n",
    "import httpcore\np = httpcore.AsyncConnectionPool()\n",
]

TOR_SNIPPETS = [
    "async def f(self): await self.tor.open_connection('h', 1)\n"
    "def g(self, tor: TorClient): self.tor = tor\n",
    "async def f(tor: 'TorClient'): await tor.create_connection(P, 'h', 1)\n",
    "class C:\n"
    "    def aio(self) -> AsyncTorClient:\n        return self._aio\n"
    "    async def f(self): await self._aio.open_connection('h', 1)\n",
    "async def f(c):\n    tor = TorClient(c)\n    await tor.open_connection('h', 1)\n",
    "import httpx\nc = httpx.Client(transport=TorSyncTransport(t))\n",
    "import httpcore\np = httpcore.AsyncConnectionPool(network_backend=B())\n",
]


def test_scanner_catches_every_pattern() -> None:
    for snippet in SNIPPETS:
        assert violations(snippet, "somewhere.py"), f"not caught: {snippet!r}"
    # ...and not the Tor API on a TorClient, nor httpx/httpcore plugged into Tor.
    for snippet in TOR_SNIPPETS:
        assert not violations(snippet, "somewhere.py"), f"flagged: {snippet!r}"
