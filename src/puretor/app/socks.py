"""The SOCKS listener of ``tor-client``: each connection becomes a Tor stream.

The handshake is parsed by the sans-I/O `puretor.proto.socks.SocksHandshake`;
the stream is opened through the public `TorClient.create_connection` API, so
the daemon is a plain user of the library.  Bytes are relayed in both
directions with asyncio flow control mapped onto Tor's windows: nothing here
can open a connection to the destination itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from puretor.app.proxied import NOTICE, ProxiedConnection, TorSide
from puretor.config.values import PolicyRule
from puretor.errors import NoPathError, OnionError, StreamRefused, StreamTimeout, TorError
from puretor.path.addressmap import is_automapped_suffix
from puretor.path.isolation import ListenerFlags, isolation_key
from puretor.proto.socks import (
    SocksCommand,
    SocksHandshake,
    SocksReply,
    SocksRequest,
    socks5_reply_for_end_reason,
)
from puretor.ratelimit import RateLimit

if TYPE_CHECKING:
    from puretor.client import TorClient

log = logging.getLogger("puretor.socks")
# C tor warns about IP-only requests (with SafeSocks) at most every 5 s (SOCKS_WARN_INTERVAL).
_unsafe_socks_warnings = RateLimit(5.0)

# A client must finish its SOCKS handshake within this long (stricter than C tor, which
# allows SocksTimeout, 2 minutes); a smaller SocksTimeout lowers it (ListenerPolicy).
HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """The isolation and error flags of one SocksPort, and the SOCKS options (C tor's names)."""

    listener_id: int
    flags: ListenerFlags = ListenerFlags()  # stream isolation (puretor.path.isolation)
    extended_errors: bool = False
    safe_logging: bool = True
    safe_socks: bool = False  # SafeSocks: refuse requests that carry only an IP address
    test_socks: bool = False  # TestSocks: say for every request whether it was safe
    socks_policy: tuple[PolicyRule, ...] = ()  # SocksPolicy: who may connect
    # C tor's SocksTimeout: how long a client may take over its handshake, and how long
    # its request may wait for a circuit and the exit's answer.
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    connect_timeout: float = 120.0  # C tor's SocksTimeout default
    # PreferIPv6Automap: a SOCKS5 RESOLVE of an automapped name gets an IPv6 address.
    prefer_ipv6_automap: bool = True


class SocksServerStats:
    """One listener's counters (SIGUSR1's statistics, the MetricsPort)."""

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.refused = 0
        self.streams_opened = 0
        self.stream_failures: Counter[str] = Counter()  # END reason name -> count
        self.bytes_from_client = 0
        self.bytes_to_client = 0

    def stream_failed(self, exc: BaseException) -> None:
        if isinstance(exc, StreamRefused):
            self.stream_failures[exc.reason_name] += 1
        elif isinstance(exc, (TimeoutError, StreamTimeout)):
            self.stream_failures["TIMEOUT"] += 1
        elif isinstance(exc, OnionError):
            self.stream_failures["ONION"] += 1
        elif isinstance(exc, NoPathError):
            self.stream_failures["NOROUTE"] += 1
        else:
            self.stream_failures["MISC"] += 1


class SocksConnection(ProxiedConnection):
    """One SOCKS client connection."""

    door = "socks"

    def __init__(
        self,
        tor: TorClient,
        policy: ListenerPolicy,
        stats: SocksServerStats,
        limit: asyncio.Semaphore | None,
    ) -> None:
        super().__init__(tor, policy, stats, limit)
        self.handshake = SocksHandshake(extended_errors=policy.extended_errors)

    # -- client side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.accept(transport):
            self.start_handshake_timer()

    def data_received(self, data: bytes) -> None:
        if self.relay_to_tor(data):
            return
        if self.handshake.request is not None:
            self._early_data(data)
            return
        hs = self.handshake
        hs.receive_data(data)
        out = hs.data_to_send()
        if out and self.client is not None:
            self.client.write(out)
        if hs.error is not None:
            log.info("SOCKS client %s: %s", self._who(), hs.error)
            self._finish()
            return
        if hs.request is not None:
            self._cancel_timer()
            if hs.leftover:
                self._early_data(hs.leftover)
            self.task = asyncio.ensure_future(self._serve(hs.request))

    # -- serving a request ---------------------------------------------------------

    def isolation_key(self, req: SocksRequest) -> Hashable:
        return isolation_key(
            listener_id=self.policy.listener_id,
            listener_flags=self.policy.flags,
            client_addr=self.peer,
            socks_username=req.username,
            socks_password=req.password,
            dest_host=req.host,
            dest_port=req.port,
            protocol=f"socks{req.version}",
        )

    def _check_safe_socks(self, req: SocksRequest) -> bool:
        """C tor's SafeSocks/TestSocks (proto_socks.c): False to refuse the request."""
        unsafe = req.address_type != "hostname" and req.command is not SocksCommand.RESOLVE_PTR
        p = self.policy
        if unsafe and p.safe_socks:
            if _unsafe_socks_warnings.allow(time.monotonic()):
                log.warning(
                    "Your application (using socks%d to port %d) is giving Tor only an IP "
                    "address. Applications that do DNS resolves themselves may leak "
                    "information. Consider using Socks4A (e.g. via privoxy or socat) "
                    "instead. Rejecting.",
                    req.version,
                    req.port,
                )
            return False
        if p.test_socks:
            if unsafe:
                log.log(
                    NOTICE,
                    "Your application (using socks%d to port %d) is giving Tor only an IP "
                    "address: it resolved the name itself, which may leak information.",
                    req.version,
                    req.port,
                )
            else:
                log.log(
                    NOTICE,
                    "Your application (using socks%s to port %d) instructed Tor to take care "
                    "of the DNS resolution itself if necessary. This is good.",
                    "4a" if req.version == 4 else "5",
                    req.port,
                )
        return True

    async def _serve(self, req: SocksRequest) -> None:
        if not self._check_safe_socks(req):
            self._reply_error(SocksReply.NOT_ALLOWED)
            return
        try:
            if self.limit is not None:
                await self.limit.acquire()
            try:
                if req.command is SocksCommand.CONNECT:
                    await self._connect(req)
                else:
                    await self._resolve(req)
            finally:
                if self.limit is not None:
                    self.limit.release()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one client take the daemon down
            log.warning(
                "SOCKS request from %s failed unexpectedly: %s", self._who(), self._why(exc, req)
            )
            self._reply_error(SocksReply.GENERAL_FAILURE)

    async def _connect(self, req: SocksRequest) -> None:
        try:
            transport, _ = await self.tor.create_connection(
                lambda: TorSide(self),
                req.host,
                req.port,
                isolation=self.isolation_key(req),
                timeout=self.policy.connect_timeout,
                source=self.source,
            )
        except OnionError as exc:
            log.info("onion request from %s failed: %s", self._who(), self._why(exc, req))
            self.stats.stream_failed(exc)
            # Without ExtendedErrors C tor answers "host unreachable" (RESOLVEFAILED).
            self._reply_error(exc.socks_code, fallback=SocksReply.HOST_UNREACHABLE)
            return
        except StreamRefused as exc:
            log.info("stream to %s refused: %s", self._dest(req), self._why(exc, req))
            self.stats.stream_failed(exc)
            self._reply_error(socks5_reply_for_end_reason(exc.reason))
            return
        except (TimeoutError, StreamTimeout) as exc:
            log.info("stream to %s timed out", self._dest(req))
            self.stats.stream_failed(exc)
            self._reply_error(SocksReply.TTL_EXPIRED)
            return
        except NoPathError as exc:
            log.warning("no path for %s: %s", self._dest(req), self._why(exc, req))
            self.stats.stream_failed(exc)
            self._reply_error(SocksReply.NOT_ALLOWED)
            return
        except TorError as exc:
            log.info("stream to %s failed: %s", self._dest(req), self._why(exc, req))
            self.stats.stream_failed(exc)
            self._reply_error(SocksReply.GENERAL_FAILURE)
            return
        self.stream_opened(transport, self.handshake.reply_connected())

    async def _resolve(self, req: SocksRequest) -> None:
        config = self.tor.config
        if (
            req.command is SocksCommand.RESOLVE
            and config.automap_hosts_on_resolve
            and is_automapped_suffix(req.host, config.automap_hosts_suffixes)
        ):
            # AutomapHostsOnResolve: a virtual address that later connections map back.
            version = 6 if req.version == 5 and self.policy.prefer_ipv6_automap else 4
            try:
                virtual = self.tor.automap_address(req.host, version)
            except ValueError as exc:
                log.warning("Automapping failed: %s", exc)
                self._reply_error(SocksReply.GENERAL_FAILURE)
                return
            if self.client is not None and not self.client.is_closing():
                self.client.write(self.handshake.reply_resolved(virtual, 60))
                self.client.close()
            return
        try:
            if req.command is SocksCommand.RESOLVE_PTR:
                names = await self.tor.resolve_ptr(req.host, isolation=self.isolation_key(req))
                answer: str = names[0]
            else:
                addrs = await self.tor.resolve(req.host, isolation=self.isolation_key(req))
                answer = _pick_address(addrs, req.version)
        except StreamRefused as exc:
            self._reply_error(socks5_reply_for_end_reason(exc.reason))
            return
        except (TimeoutError, TorError, IndexError) as exc:
            log.info("resolve of %s failed: %s", self._dest(req), self._why(exc, req))
            self._reply_error(SocksReply.HOST_UNREACHABLE)
            return
        if self.client is not None and not self.client.is_closing():
            self.client.write(self.handshake.reply_resolved(answer, 60))
            self.client.close()

    # -- helpers ---------------------------------------------------------------------

    def _reply_error(self, code: int, *, fallback: int = SocksReply.GENERAL_FAILURE) -> None:
        if self.client is not None and not self.client.is_closing():
            # The handshake downgrades extended codes unless the port has ExtendedErrors.
            self.client.write(self.handshake.reply_error(code, fallback=fallback))
            self.client.close()

    def _finish(self) -> None:
        if self.client is not None:
            self.client.close()

    def _dest(self, req: SocksRequest) -> str:
        return "[scrubbed]" if self.policy.safe_logging else f"{req.host}:{req.port}"

    def _why(self, exc: BaseException, req: SocksRequest) -> str:
        """An error for the log: with SafeLogging, without the destination (errors name
        it, e.g. "invalid onion address 'x.onion'") nor the SOCKS credentials."""
        text = str(exc) if isinstance(exc, TorError) else repr(exc)
        if not self.policy.safe_logging:
            return text
        secrets = [req.host, req.host.removesuffix(".onion")]
        secrets += [v.decode(errors="replace") for v in (req.username, req.password) if v]
        for secret in sorted((x for x in secrets if x), key=len, reverse=True):
            text = re.sub(re.escape(secret), "[scrubbed]", text, flags=re.IGNORECASE)
        return text


def _pick_address(addrs: list[str], version: int) -> str:
    for a in addrs:
        if version == 4 and ipaddress.ip_address(a).version != 4:
            continue
        return a
    raise IndexError("no usable address in the answer")


class SocksListener:
    """A listening SOCKS port; ``policy`` may be replaced (SIGHUP) and applies to new
    connections from then on, as in C tor."""

    def __init__(self, server: asyncio.AbstractServer, policy: ListenerPolicy) -> None:
        self.server = server
        self.policy = policy
        self.stats = SocksServerStats()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
        return host, port

    def close(self) -> None:
        self.server.close()


async def start_socks_listener(
    tor: TorClient,
    host: str,
    port: int,
    policy: ListenerPolicy,
    *,
    max_connections: int = 8192,
    max_concurrent_requests: int = 1024,
) -> SocksListener:
    """Listen on ``host:port``; a port in use raises OSError (never another port)."""
    return await start_listener(
        tor,
        host,
        port,
        policy,
        SocksConnection,
        max_connections=max_connections,
        max_concurrent_requests=max_concurrent_requests,
    )


async def start_listener(
    tor: TorClient,
    host: str,
    port: int,
    policy: ListenerPolicy,
    connection: Callable[
        [TorClient, ListenerPolicy, SocksServerStats, asyncio.Semaphore], asyncio.Protocol
    ],
    *,
    max_connections: int = 8192,
    max_concurrent_requests: int = 1024,
) -> SocksListener:
    """A listener of any application port (SOCKS, HTTP CONNECT, TransPort): one
    ``connection(tor, policy, stats, limit)`` per client, refused above ``max_connections``;
    a port in use raises OSError."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(max_concurrent_requests)
    listener: SocksListener | None = None

    def factory() -> asyncio.Protocol:
        assert listener is not None
        stats = listener.stats
        if stats.active >= max_connections:
            return _Refuse(stats)
        return connection(tor, listener.policy, stats, limit)

    server = await loop.create_server(factory, host, port, reuse_address=True, backlog=1024)
    listener = SocksListener(server, policy)
    return listener


class _Refuse(asyncio.Protocol):
    def __init__(self, stats: SocksServerStats) -> None:
        self.stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stats.refused += 1
        transport.close()


ProtocolFactory = Callable[[], asyncio.Protocol]
__all__ = [
    "ListenerPolicy",
    "SocksConnection",
    "SocksListener",
    "TorSide",
    "start_listener",
    "start_socks_listener",
]
