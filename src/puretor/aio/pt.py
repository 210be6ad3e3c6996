"""Pluggable transport proxies (pt-spec): managed ones we start, external SOCKS5 ones.

``ClientTransportPlugin obfs4 exec /usr/bin/obfs4proxy`` starts the program with pt-spec's
environment, reads its configuration lines (puretor.proto.pt) and connects through the
SOCKS5 port it names, passing the bridge's ``k=v`` arguments as username/password.  The
proxy is started on first use, restarted when it dies, and stopped by closing its stdin
(TOR_PT_EXIT_ON_STDIN_CLOSE), then SIGTERM and SIGKILL by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from puretor.config.values import TransportPlugin
from puretor.proto.pt import (
    CMethodsDone,
    Log,
    ManagedProxyParser,
    PtProtocolError,
    Socks5Connect,
    Socks5Error,
    Status,
    managed_env,
    socks_auth_for_args,
)

log = logging.getLogger("puretor.pt")
NOTICE = 25

CONFIGURE_TIMEOUT = 30.0  # for VERSION ... CMETHODS DONE
STOP_GRACE = 2.0  # after closing stdin, before SIGTERM (and again before SIGKILL)
RESTART_MIN, RESTART_MAX = 0.5, 60.0
_LOG_LEVELS = {
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "notice": NOTICE,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


class TransportError(ConnectionError):
    """The transport proxy is missing, broken, or cannot reach the bridge."""


class ManagedProxy:
    """One ``ClientTransportPlugin NAMES exec PATH ARGS`` process."""

    def __init__(self, plugin: TransportPlugin, state_dir: Path) -> None:
        self.plugin = plugin
        self.state_dir = state_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.methods: dict[str, tuple[str, int]] = {}
        self.starts = 0  # how many times we launched it
        self._ready: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = 0
        self._next_start = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def address(self, transport: str) -> tuple[str, int]:
        """The proxy's SOCKS address for `transport`, launching (or relaunching) it if needed."""
        if self._closing:
            raise TransportError("shutting down")
        if self._ready is None or (self._ready.done() and self.pid is None):
            await self._launch()
        assert self._ready is not None
        await asyncio.wait_for(asyncio.shield(self._ready), CONFIGURE_TIMEOUT)
        where = self.methods.get(transport)
        if where is None:
            raise TransportError(f"the {self._name} proxy offers no {transport!r} transport")
        return where

    @property
    def _name(self) -> str:
        return ",".join(self.plugin.transports)

    async def _launch(self) -> None:
        delay = self._next_start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self.methods = {}
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = managed_env(
            os.environ, state_dir=str(self.state_dir), transports=self.plugin.transports
        )
        argv = self.plugin.argv
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # our Ctrl-C is not its Ctrl-C; we stop it ourselves
            )
        except OSError as exc:
            self._note_failure()
            error = TransportError(f"could not launch managed proxy {argv[0]!r}: {exc}")
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved here; callers see it through address()
            log.warning("%s", error)
            raise error from exc
        self.starts += 1
        log.info("Launched managed proxy %s (pid %d) for %s", argv[0], self.proc.pid, self._name)
        self._reader = asyncio.ensure_future(self._read(self.proc, self._ready))

    def _note_failure(self) -> None:
        self._failures += 1
        backoff = min(RESTART_MAX, RESTART_MIN * 2 ** (self._failures - 1))
        self._next_start = time.monotonic() + backoff

    async def _read(self, proc: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        parser = ManagedProxyParser(self.plugin.transports)
        assert proc.stdout is not None
        problem: str | None = None
        try:
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    break
                for event in parser.feed(chunk):
                    self._handle(event, parser, ready)
        except PtProtocolError as exc:
            problem = str(exc)
            log.warning("Managed proxy %s: %s", self.plugin.argv[0], exc)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        if not ready.done():
            self._note_failure()
            why = problem or f"it exited ({proc.returncode}) before CMETHODS DONE"
            ready.set_exception(TransportError(f"managed proxy {self.plugin.argv[0]}: {why}"))
            ready.exception()
        elif not self._closing:
            self._note_failure()
            log.warning(
                "Managed proxy at '%s' died (exit status %s); restarting it.",
                self.plugin.argv[0],
                proc.returncode,
            )
            # Restart at once (after the back-off), so the next connection finds it ready.
            asyncio.ensure_future(self._restart_soon())

    async def _restart_soon(self) -> None:
        with contextlib.suppress(TransportError, TimeoutError, asyncio.CancelledError):
            if not self._closing and self.pid is None:
                await self._launch()

    def _handle(
        self, event: object, parser: ManagedProxyParser, ready: asyncio.Future[None]
    ) -> None:
        if isinstance(event, Log):
            log.log(
                _LOG_LEVELS.get(event.severity, logging.INFO), "Managed proxy: %s", event.message
            )
        elif isinstance(event, Status):
            log.info("Managed proxy status: %s %s", event.transport, dict(event.values))
        elif isinstance(event, CMethodsDone):
            for name, message in parser.errors.items():
                log.warning("Transport '%s' could not be launched: %s", name, message)
            self.methods = {n: (m.host, m.port) for n, m in parser.methods.items()}
            for name in self.plugin.transports:
                if name in self.methods:
                    host, port = self.methods[name]
                    log.log(NOTICE, "Registered client transport '%s' at '%s:%d'", name, host, port)
            self._failures = 0
            if not ready.done():
                ready.set_result(None)

    async def close(self) -> None:
        """Close stdin (TOR_PT_EXIT_ON_STDIN_CLOSE), then SIGTERM, then SIGKILL, by PID."""
        self._closing = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        for step in (None, "terminate", "kill"):
            if step is not None:
                with contextlib.suppress(ProcessLookupError):
                    getattr(proc, step)()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
                break
            except TimeoutError:
                continue
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, STOP_GRACE)


class Transports:
    """Every configured transport: connect to a bridge through the right proxy."""

    def __init__(self, plugins: Sequence[TransportPlugin], data_dir: Path) -> None:
        self.managed: dict[str, ManagedProxy] = {}
        self.external: dict[str, tuple[str, int]] = {}
        for plugin in plugins:
            if plugin.kind == "exec":
                proxy = ManagedProxy(plugin, data_dir / "pt_state")
                for name in plugin.transports:
                    self.managed.setdefault(name, proxy)
            else:
                assert plugin.address is not None
                for name in plugin.transports:
                    self.external.setdefault(name, plugin.address)

    def handles(self, transport: str) -> bool:
        return transport in self.managed or transport in self.external

    def proxy_pid(self, transport: str) -> int | None:
        proxy = self.managed.get(transport)
        return proxy.pid if proxy is not None else None

    async def connect(
        self, transport: str, host: str, port: int, args: Sequence[tuple[str, str]]
    ) -> socket.socket:
        """A TCP connection to the bridge at host:port through the transport's proxy, after
        the SOCKS5 handshake (the socket is then the bridge's stream)."""
        if transport in self.managed:
            where = await self.managed[transport].address(transport)
        elif transport in self.external:
            where = self.external[transport]
        else:
            raise TransportError(f"no ClientTransportPlugin for transport {transport!r}")
        try:
            auth = socks_auth_for_args(args)
        except ValueError as exc:
            raise TransportError(str(exc)) from exc
        hs = Socks5Connect(host, port, *(auth or (None, None)))
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, where)
            await loop.sock_sendall(sock, hs.start())
            while not hs.done:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    raise TransportError(f"the {transport} proxy closed the connection")
                out = hs.receive(data)
                if out:
                    await loop.sock_sendall(sock, out)
            if hs.leftover:
                raise TransportError(f"the {transport} proxy sent data before TLS began")
        except Socks5Error as exc:
            sock.close()
            raise TransportError(f"{transport} proxy: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    async def close(self) -> None:
        for proxy in {id(p): p for p in self.managed.values()}.values():
            await proxy.close()
