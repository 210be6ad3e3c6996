"""The destinations behind the exits: HTTP(S), TCP echo and DNS, in one daemon process.

Run inside the namespace as ``python -m puretor.testnet serve-targets --config FILE``. Every TCP
connection's source address is appended to the source log, so tests can prove afterwards that
only exits (127.N.0.1) and onion hosts ever connected - never a client directly (127.0.0.1).

HTTP endpoints (every HTTP listener serves all of them):
    GET  /                 "puretor testnet <site>\\n" (the site tells onion backends apart)
    GET  /ip               the source address this server sees, "\\n"-terminated
    GET  /files/<name>     deterministic payloads, see `payload()` (1MiB, 10MiB, 100MiB)
    GET  /bytes/<n>        the first n bytes of the 100MiB payload
    POST /upload           sha256 hex of the body (Content-Length or chunked), "\\n"-terminated
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from puretor.testnet.demo_repos import demo_files
from puretor.testnet.dns import DnsServer

_CHUNK = 256 * 1024


def payload(name: str, size: int) -> bytes:
    """The deterministic content of file `name` (tests can regenerate it)."""
    return hashlib.shake_256(f"puretor-testnet:{name}".encode()).digest(size)


@dataclass(frozen=True)
class SourceRecord:
    time: float
    listener: str
    ip: str
    port: int


def read_source_log(path: str | Path) -> list[SourceRecord]:
    records = []
    for line in Path(path).read_text().splitlines():
        t, listener, ip, port = line.split()
        records.append(SourceRecord(float(t), listener, ip, int(port)))
    return records


class SourceLog:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def record(self, listener: str, peer: tuple[str, int]) -> None:
        with self._lock:
            self._file.write(f"{time.time():.3f} {listener} {peer[0]} {peer[1]}\n")


_DEMO_FILES = demo_files()


class TargetHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self,
        addr: tuple[str, int],
        *,
        name: str,
        site: str,
        files: dict[str, bytes],
        source_log: SourceLog,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.name, self.site, self.files = name, site, files
        self.source_log, self.tls = source_log, tls
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-transfer are normal here (fault tests)


class _Handler(BaseHTTPRequestHandler):
    server: TargetHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, always with Content-Length
    timeout = 120

    def setup(self) -> None:
        self.server.source_log.record(self.server.name, self.client_address)
        if self.server.tls is not None:
            # Handshake in this connection's thread, not in the accept loop.
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes | memoryview, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.command == "HEAD":
            self.end_headers()
            return
        if len(body) <= _CHUNK:
            # Headers and a small body in one write, hence one TLS record / one Tor cell run,
            # as real servers do.
            self._headers_buffer.append(b"\r\n" + bytes(body))  # type: ignore[attr-defined]
            self.flush_headers()
            return
        self.end_headers()
        view = memoryview(body)
        for i in range(0, len(view), _CHUNK):
            self.wfile.write(view[i : i + _CHUNK])

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, f"puretor testnet {self.server.site}\n".encode())
        elif path == "/ip":
            self._send(200, f"{self.client_address[0]}\n".encode())
        elif path.startswith("/files/") and path[7:] in self.server.files:
            self._send(200, self.server.files[path[7:]], "application/octet-stream")
        elif path in _DEMO_FILES:  # the docs' git and pip recipes (demo_repos.py)
            ctype = "text/html" if path.endswith("/") else "application/octet-stream"
            self._send(200, _DEMO_FILES[path], ctype)
        elif path.startswith("/bytes/") and path[7:].isdigit():
            biggest = max(self.server.files.values(), key=len)
            n = int(path[7:])
            if n > len(biggest):
                self._send(400, b"too many bytes\n")
            else:
                self._send(200, memoryview(biggest)[:n], "application/octet-stream")
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/upload":
            self._send(404, b"not found\n")
            return
        digest = hashlib.sha256()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                self._read_into(digest, size)
                self.rfile.readline()  # CRLF after each chunk
        else:
            self._read_into(digest, int(self.headers.get("Content-Length", "0")))
        self._send(200, f"{digest.hexdigest()}\n".encode())

    def _read_into(self, digest: Any, n: int) -> None:
        while n > 0:
            data = self.rfile.read(min(n, _CHUNK))
            if not data:
                raise ConnectionError("body ended early")
            digest.update(data)
            n -= len(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], source_log: SourceLog) -> None:
        self.source_log = source_log
        super().__init__(addr, _EchoHandler)


class _EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        self.server.source_log.record("echo", self.client_address)
        sock: socket.socket = self.request
        while data := sock.recv(65536):
            sock.sendall(data)


def serve(config: dict[str, Any]) -> None:
    """Start every listener in `config`, write the ready file, serve until SIGTERM/SIGINT."""
    started = time.monotonic()
    files = {name: payload(name, size) for name, size in config["files"].items()}
    log = SourceLog(Path(config["source_log"]))
    tls: ssl.SSLContext | None = None
    if config.get("tls"):
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(config["tls"]["cert"], config["tls"]["key"])

    servers: list[socketserver.BaseServer] = []
    for spec in config["http"]:
        servers.append(
            TargetHTTPServer(
                (spec["host"], spec["port"]),
                name=spec["name"],
                site=spec["site"],
                files=files,
                source_log=log,
                tls=tls if spec.get("tls") else None,
            )
        )
    for spec in config["echo"]:
        servers.append(EchoServer((spec["host"], spec["port"]), log))
    dns = DnsServer(config["dns"]["host"], config["dns"]["port"], config["dns"]["names"])
    dns.start()
    for srv in servers:
        threading.Thread(target=srv.serve_forever, args=(0.1,), name="serve", daemon=True).start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    ready = {
        "pid": os.getpid(),
        "startup_seconds": round(time.monotonic() - started, 3),
        "files": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        },
    }
    ready_path = Path(config["ready_file"])
    tmp = ready_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ready, indent=2))
    tmp.rename(ready_path)  # atomic: the launcher never reads half a file
    while not stop.wait(0.25):  # short waits so signal handlers always get to run
        pass
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    dns.close()
