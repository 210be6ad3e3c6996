"""A small outbound proxy for tests: SOCKS4, SOCKS5 (optionally with username/password) and
HTTP CONNECT (optionally with Basic auth) on one port, in a thread.  It records where each
client asked to go and relays bytes both ways.

    with ProxyServer(user="u", password="p") as proxy:    # proxy.port, proxy.destinations
        ...
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import threading
from types import TracebackType


class ProxyServer:
    def __init__(self, *, user: str | None = None, password: str | None = None) -> None:
        self.user, self.password = user, password
        self.destinations: list[tuple[str, int, str]] = []  # (host, port, protocol)
        self.refused = 0  # clients with wrong credentials
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProxyServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            first = await r.readexactly(1)
            if first == b"\x05":
                target = await self._socks5(r, w)
            elif first == b"\x04":
                head = await r.readexactly(7)
                await r.readuntil(b"\x00")
                port = int.from_bytes(head[1:3], "big")
                host = str(ipaddress.ip_address(head[3:7]))
                target = (host, port, "socks4")
            else:
                target = await self._http(first, r, w)
            if target is None:
                w.close()
                return
            host, port, proto = target
            self.destinations.append(target)
            try:
                ur, uw = await asyncio.open_connection(host, port)
            except OSError:
                w.write({"socks5": b"\x05\x05\x00\x01" + bytes(6), "socks4": b"\x00\x5b" + bytes(6)}
                        .get(proto, b"HTTP/1.0 502 Bad Gateway\r\n\r\n"))  # fmt: skip
                await w.drain()
                w.close()
                return
            w.write({"socks5": b"\x05\x00\x00\x01" + bytes(6), "socks4": b"\x00\x5a" + bytes(6)}
                    .get(proto, b"HTTP/1.0 200 Connection established\r\n\r\n"))  # fmt: skip
            await w.drain()
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            w.close()

    async def _socks5(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> tuple[str, int, str] | None:
        n = (await r.readexactly(1))[0]
        methods = await r.readexactly(n)
        want = 2 if self.user is not None else 0
        if want not in methods:
            w.write(b"\x05\xff")
            self.refused += 1
            return None
        w.write(bytes([5, want]))
        if want == 2:
            await r.readexactly(1)
            user = await r.readexactly((await r.readexactly(1))[0])
            pw = await r.readexactly((await r.readexactly(1))[0])
            ok = (user.decode(), pw.decode()) == (self.user, self.password)
            w.write(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                self.refused += 1
                return None
        head = await r.readexactly(4)
        size = {1: 4, 4: 16}[head[3]]
        host = str(ipaddress.ip_address(await r.readexactly(size)))
        port = int.from_bytes(await r.readexactly(2), "big")
        return host, port, "socks5"

    async def _http(
        self, first: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> tuple[str, int, str] | None:
        head = (first + await r.readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        method, where, _ = lines[0].split(" ")
        if self.user is not None:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if f"Proxy-Authorization: Basic {token}" not in lines:
                w.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                self.refused += 1
                return None
        host, _, port = where.rpartition(":")
        return host.strip("[]"), int(port), "https"

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()


class Forwarder(ProxyServer):
    """A plain TCP forwarder to `target` that keeps the first bytes each client sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target
        self.first_bytes: list[bytes] = []

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            first = await r.read(4096)
            self.first_bytes.append(first)
            ur, uw = await asyncio.open_connection(*self.target)
            uw.write(first)
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        except (ConnectionError, OSError):
            w.close()
