"""`TorClient`: Tor inside an asyncio program.

    async with TorClient(TorConfig(...)) as tor:
        reader, writer = await tor.open_connection("example.com", 80)

Every connection is a stream on a 3-hop circuit; names are resolved by the
exit, never locally.  The ``tor-client`` SOCKS daemon is built on this API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl as _ssl
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from puretor.aio.channel import ChannelManager
from puretor.aio.circmgr import CircuitManager
from puretor.aio.circuit import CircuitHandle
from puretor.aio.dirmgr import BootstrapStatus, DirManager
from puretor.aio.stream import TorStreamTransport
from puretor.config import TorConfig
from puretor.errors import (
    BootstrapError,
    CircuitError,
    ConfigError,
    StreamRefused,
    StreamTimeout,
    TorError,
)
from puretor.path.guards import GuardManager
from puretor.proto.relaymsg import EndReason

log = logging.getLogger("puretor")

P = TypeVar("P", bound=asyncio.BaseProtocol)

STREAM_ATTACH_TIMEOUT = 15.0  # C tor: 10-15 s before trying another circuit
STREAM_ATTEMPTS = 4
STREAM_TOTAL_TIMEOUT = 120.0  # C tor's SocksTimeout
_RETRY_REASONS = frozenset(
    {
        EndReason.EXITPOLICY,
        EndReason.DESTROY,
        EndReason.RESOURCELIMIT,
        EndReason.HIBERNATING,
        EndReason.TIMEOUT,
    }
)


class IsolationToken:
    """Streams opened with different tokens never share a circuit."""

    __slots__ = ("_name",)

    def __init__(self, name: str = "") -> None:
        self._name = name

    def __repr__(self) -> str:
        return (
            f"IsolationToken({self._name!r})" if self._name else f"<IsolationToken {id(self):#x}>"
        )


_DEFAULT_ISOLATION = IsolationToken("default")


class TorClient:
    """A Tor client: bootstrap once, then open streams through 3-hop circuits."""

    def __init__(self, config: TorConfig | None = None) -> None:
        self.config = config if config is not None else TorConfig()
        self._chanmgr = ChannelManager()
        self._dirmgr = DirManager(self.config, self._chanmgr)
        self._circmgr: CircuitManager | None = None
        self._guards: GuardManager | None = None
        self._bootstrap_task: asyncio.Task[None] | None = None
        self._onion: Any = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> TorClient:
        await self.bootstrap()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def bootstrap_status(self) -> BootstrapStatus:
        return self._dirmgr.status

    def add_bootstrap_listener(self, callback: Callable[[BootstrapStatus], None]) -> None:
        """Call ``callback`` on every bootstrap progress step (percent, tag, summary)."""
        self._dirmgr.listeners.append(callback)

    async def bootstrap(self) -> None:
        """Fetch and verify the directory, then get ready to build circuits."""
        if self._closed:
            raise BootstrapError("client is closed")
        if self._bootstrap_task is None:
            self._bootstrap_task = asyncio.ensure_future(self._bootstrap())
        await asyncio.shield(self._bootstrap_task)

    async def _bootstrap(self) -> None:
        await self._dirmgr.bootstrap()
        self._guards = self._dirmgr.load_guards()
        cfg = self.config
        self._circmgr = CircuitManager(
            self._chanmgr,
            lambda: self._dirmgr.require_netdir(),
            self._guards,
            enforce_distinct_subnets=cfg.distinct_subnets,
            max_dirtiness=cfg.max_circuit_dirtiness,
            on_guards_changed=self._dirmgr.save_guards_soon,
        )
        self._dirmgr.guards = self._guards
        self._dirmgr.circmgr = self._circmgr
        await self._dirmgr.finish_bootstrap(self._circmgr)
        self._circmgr.start()
        self._dirmgr.start_refresh()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bootstrap_task is not None and not self._bootstrap_task.done():
            self._bootstrap_task.cancel()
        if self._onion is not None:
            await self._onion.close()
        if self._circmgr is not None:
            await self._circmgr.close()
        await self._dirmgr.close()
        self._chanmgr.close_all()

    async def new_identity(self) -> None:
        """Like NEWNYM: circuits in use so far take no new streams."""
        if self._circmgr is not None:
            self._circmgr.new_identity()

    def isolated(self) -> IsolationToken:
        return IsolationToken()

    # -- streams -----------------------------------------------------------------

    async def create_connection(
        self,
        protocol_factory: Callable[[], P],
        host: str,
        port: int,
        *,
        isolation: Hashable | None = None,
        timeout: float = STREAM_TOTAL_TIMEOUT,
    ) -> tuple[asyncio.Transport, P]:
        """Open a stream to ``host:port`` through Tor; like `loop.create_connection`."""
        host = _check_target(host, port)
        await self.bootstrap()
        if host.endswith(".onion"):
            from puretor.hs.address import parse_onion_address

            parse_onion_address(host)  # raises OnionError(0xF6) when malformed
            return await self._onion_connection(protocol_factory, host, port, isolation, timeout)
        key = _DEFAULT_ISOLATION if isolation is None else isolation
        return await asyncio.wait_for(
            self._connect_with_retries(protocol_factory, host, port, key), timeout
        )

    async def _onion_connection(
        self,
        protocol_factory: Callable[[], P],
        host: str,
        port: int,
        isolation: Hashable | None,
        timeout: float,
    ) -> tuple[asyncio.Transport, P]:
        from puretor.aio.hsclient import OnionClient

        assert self._circmgr is not None
        if self._onion is None:
            self._onion = OnionClient(self.config, self._dirmgr, self._circmgr)
        key = _DEFAULT_ISOLATION if isolation is None else isolation

        async def connect() -> tuple[asyncio.Transport, P]:
            assert self._onion is not None
            last: TorError | None = None
            for _attempt in range(2):
                handle = await self._onion.rendezvous_circuit(host, key)
                try:
                    transport = await self._attach(handle, "", port, target=f"{host}:{port}")
                except (StreamRefused, StreamTimeout) as exc:
                    # A stale rendezvous circuit: drop it and make a new one once.
                    last = exc
                    handle.close()
                    if isinstance(exc, StreamRefused) and exc.reason not in _RETRY_REASONS:
                        raise
                    continue
                protocol = protocol_factory()
                transport.attach(protocol)
                return transport, protocol
            assert last is not None
            raise last

        return await asyncio.wait_for(connect(), timeout)

    async def _connect_with_retries(
        self, protocol_factory: Callable[[], P], host: str, port: int, key: Hashable
    ) -> tuple[asyncio.Transport, P]:
        assert self._circmgr is not None
        circmgr = self._circmgr
        excluded: set[bytes] = set()
        last: TorError | None = None
        for _attempt in range(STREAM_ATTEMPTS):
            handle = await circmgr.get_exit_circuit(port, key, exclude=frozenset(excluded))
            try:
                transport = await self._attach(handle, host, port)
            except StreamRefused as exc:
                last = exc
                if exc.reason not in _RETRY_REASONS:
                    raise
                if exc.reason == EndReason.EXITPOLICY:
                    excluded.add(circmgr.exit_of(handle))
                continue
            except StreamTimeout as exc:
                last = exc
                circmgr.circuit_failed(handle)
                continue
            protocol = protocol_factory()
            transport.attach(protocol)
            return transport, protocol
        assert last is not None
        raise last

    async def _attach(
        self, handle: CircuitHandle, host: str, port: int, *, target: str | None = None
    ) -> TorStreamTransport:
        loop = asyncio.get_running_loop()
        transport = TorStreamTransport(loop, target or f"{host}:{port}")
        flags = 0
        if _is_ipv6(host):
            flags = 0x1 | 0x2  # IPv6 okay, IPv4 not okay (tor-spec §6.2)
        try:
            transport.stream = handle.circuit.open_stream(transport, host, port, flags)
        except RuntimeError as exc:  # circuit closed under us
            raise StreamRefused(f"circuit unusable: {exc}", EndReason.DESTROY) from exc
        try:
            connected = await asyncio.wait_for(
                asyncio.shield(transport.connected), STREAM_ATTACH_TIMEOUT
            )
        except TimeoutError as exc:
            transport.stream.abort()
            raise StreamTimeout(
                f"no answer from the exit within {STREAM_ATTACH_TIMEOUT:.0f}s"
            ) from exc
        transport._extra.update(
            peername=(connected.address, port) if connected.address else None,
            circuit=handle,
            exit=handle.path[-1].target,
        )
        return transport

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        isolation: Hashable | None = None,
        ssl: _ssl.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        limit: int = 2**16,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Like `asyncio.open_connection`, through Tor (``ssl=`` for TLS end to end)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        transport, protocol = await self.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port, isolation=isolation
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if ssl:
            from puretor.aio.tls import start_tls

            ctx = ssl if isinstance(ssl, _ssl.SSLContext) else _ssl.create_default_context()
            return await start_tls(reader, writer, ctx, server_hostname or host, limit=limit)
        return reader, writer

    async def resolve(self, hostname: str, *, isolation: Hashable | None = None) -> list[str]:
        """Addresses for ``hostname``, resolved by an exit (RELAY_RESOLVE)."""
        answers = await self._resolve(hostname, isolation)
        out = [str(a.value) for a in answers if a.type in (4, 6)]
        if not out:
            raise StreamRefused(f"exit could not resolve {hostname}", EndReason.RESOLVEFAILED)
        return out

    async def resolve_ptr(self, address: str, *, isolation: Hashable | None = None) -> list[str]:
        """Hostnames for an IP address (reverse lookup at the exit)."""
        ip = ipaddress.ip_address(address)
        answers = await self._resolve(ip.reverse_pointer, isolation)
        out = [str(a.value) for a in answers if a.type == 0]
        if not out:
            raise StreamRefused(f"exit has no name for {address}", EndReason.RESOLVEFAILED)
        return out

    async def _resolve(self, name: str, isolation: Hashable | None) -> list[Any]:
        _check_target(name, 1)
        await self.bootstrap()
        assert self._circmgr is not None
        key = _DEFAULT_ISOLATION if isolation is None else isolation
        last: Exception | None = None
        for _attempt in range(3):
            handle = await self._circmgr.get_exit_circuit(80, key)
            transport = TorStreamTransport(asyncio.get_running_loop(), name)
            try:
                transport.stream = handle.circuit.resolve(transport, name)
                answers = await asyncio.wait_for(
                    asyncio.shield(transport.resolved), STREAM_ATTACH_TIMEOUT
                )
            except (TimeoutError, RuntimeError, StreamRefused) as exc:
                last = exc
                self._circmgr.circuit_failed(handle)
                continue
            errors = [a for a in answers if a.type in (0xF0, 0xF1)]
            if errors and len(errors) == len(answers):
                raise StreamRefused(
                    f"exit could not resolve the name ({'transient' if errors[0].type == 0xF0 else 'permanent'} error)",
                    EndReason.RESOLVEFAILED,
                )
            return answers
        raise CircuitError(f"resolve failed: {last}")

    # -- introspection -------------------------------------------------------------

    @property
    def circuits(self) -> list[CircuitHandle]:
        return self._circmgr.open_circuits if self._circmgr is not None else []

    def stats(self) -> dict[str, Any]:
        cm = self._circmgr
        return {
            "channels_opened": self._chanmgr.connects,
            "circuits_built": cm.circuits_built if cm else 0,
            "circuit_build_failures": cm.build_failures if cm else 0,
            "open_circuits": len(self.circuits),
            "time": time.time(),
        }


def _check_target(host: str, port: int) -> str:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"invalid port {port!r}")
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or len(host) > 255 or any(c in host for c in "\0\r\n :/") and not _is_ipv6(host):
        raise StreamRefused(f"invalid destination host {host[:64]!r}", EndReason.RESOLVEFAILED)
    return host


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
