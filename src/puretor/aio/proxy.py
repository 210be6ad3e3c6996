"""Outbound proxies for our own connections (Socks4Proxy, Socks5Proxy, HTTPSProxy): every
channel to a first hop is then a TCP connection to the proxy, which connects onwards."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from puretor.proto.pt import (
    Socks5Connect,
    http_connect_reply,
    http_connect_request,
    socks4_reply,
    socks4_request,
)


class ProxyError(ConnectionError):
    pass


async def open_socket(where: tuple[str, int]) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, where)
    except BaseException:
        sock.close()
        raise
    return sock


async def _exchange(
    sock: socket.socket, request: bytes, done: Callable[[bytes], int | None]
) -> None:
    """Send `request`, read until `done(buffer)` says how long the answer was."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    buf = b""
    while True:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise ProxyError("the proxy closed the connection")
        buf += data
        used = done(buf)
        if used is not None:
            if used != len(buf):
                raise ProxyError("the proxy sent data before the relay's TLS began")
            return


async def through_socks5(
    sock: socket.socket, host: str, port: int, user: bytes | None, password: bytes | None
) -> None:
    loop = asyncio.get_running_loop()
    hs = Socks5Connect(host, port, user, password)
    await loop.sock_sendall(sock, hs.start())
    while not hs.done:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise ProxyError("the proxy closed the connection")
        out = hs.receive(data)
        if out:
            await loop.sock_sendall(sock, out)
    if hs.leftover:
        raise ProxyError("the proxy sent data before the relay's TLS began")


class OutboundProxy:
    """One of Socks4Proxy / Socks5Proxy (+Username/Password) / HTTPSProxy (+Authenticator)."""

    def __init__(
        self,
        kind: str,
        where: tuple[str, int],
        *,
        username: str | None = None,
        password: str | None = None,
        authenticator: str | None = None,
    ) -> None:
        self.kind = kind  # "socks4", "socks5", "https"
        self.where = where
        self.username = username
        self.password = password
        self.authenticator = authenticator

    async def connect(self, host: str, port: int) -> socket.socket:
        sock = await open_socket(self.where)
        try:
            if self.kind == "socks5":
                user = self.username.encode() if self.username is not None else None
                pw = self.password.encode() if self.password is not None else None
                await through_socks5(sock, host, port, user, pw)
            elif self.kind == "socks4":
                await _exchange(sock, socks4_request(host, port), socks4_reply)
            else:
                request = http_connect_request(host, port, self.authenticator)
                await _exchange(sock, request, http_connect_reply)
        except BaseException:
            sock.close()
            raise
        return sock
