"""HTTPTunnelPort: HTTP CONNECT, each tunnel a Tor stream (as C tor 0.4.9, proposal 365).

The request head is parsed by the sans-I/O `puretor.proto.httpconnect`; the stream is
opened with `TorClient.create_connection`, exactly as the SOCKS listener does, and
shares its limits (connection cap, handshake timeout, concurrent requests), its
SocksPolicy check (C tor applies SocksPolicy to every application port) and its relay
plumbing.  A failed stream gets the status C tor maps from the END reason, with
``Tor-Request-Failed``; nothing is ever connected to other than through Tor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

from puretor import __version__
from puretor.app.proxied import ProxiedConnection, TorSide
from puretor.app.socks import (
    ListenerPolicy,
    SocksListener,
    SocksServerStats,
    start_listener,
)
from puretor.errors import NoPathError, OnionError, StreamRefused, StreamTimeout, TorError
from puretor.path.isolation import isolation_key
from puretor.proto.httpconnect import (
    HttpConnectParser,
    HttpRequest,
    connect_failed,
    connect_ok,
    options_reply,
)
from puretor.proto.relaymsg import EndReason
from puretor.ratelimit import RateLimit

if TYPE_CHECKING:
    from puretor.client import TorClient

log = logging.getLogger("puretor.http")


def _via() -> str:
    return f"puretor {__version__}"


# C tor warns about legacy Proxy-Authorization isolation; at most every 5 minutes here.
_legacy_auth_warnings = RateLimit(300.0)


class HttpTunnelConnection(ProxiedConnection):
    """One HTTP CONNECT client connection."""

    door = "HTTP tunnel"

    def __init__(
        self,
        tor: TorClient,
        policy: ListenerPolicy,
        stats: SocksServerStats,
        limit: asyncio.Semaphore | None,
    ) -> None:
        super().__init__(tor, policy, stats, limit)
        self.parser = HttpConnectParser(via=_via())

    # -- client side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.accept(transport):
            self.start_handshake_timer()

    def data_received(self, data: bytes) -> None:
        if self.relay_to_tor(data):
            return
        if self.task is not None:
            self._early_data(data)
            return
        self.parser.receive_data(data)
        self._handle_parsed()

    def _handle_parsed(self) -> None:
        parser = self.parser
        while True:
            if parser.error is not None:
                log.info("HTTP tunnel client %s: %s", self._who(), parser.error)
                if self.client is not None:
                    if parser.error_reply:
                        self.client.write(parser.error_reply)
                        self.client.close()
                    else:
                        self.client.abort()
                return
            req = parser.request
            if req is None:
                return
            if req.method == "OPTIONS":
                if self.client is not None:
                    self.client.write(options_reply(_via()))
                parser.reset()
                continue
            self._cancel_timer()
            username = req.isolation_username
            if (
                username is not None
                and not username.startswith(b"tor:")
                and _legacy_auth_warnings.allow(time.monotonic())
            ):
                log.warning(
                    "Proxy-Authorization header in legacy format. With modern Tor, use Basic "
                    "auth with username=tor."
                )
            if parser.leftover:
                self._early_data(parser.leftover)
            self.task = asyncio.ensure_future(self._serve(req))
            return

    # -- serving a request ---------------------------------------------------------

    def isolation_key(self, req: HttpRequest) -> Hashable:
        # C tor puts Proxy-Authorization in the SOCKS username and the isolation header
        # in the password, so IsolateSOCKSAuth covers both.
        return isolation_key(
            listener_id=self.policy.listener_id,
            listener_flags=self.policy.flags,
            client_addr=self.peer,
            socks_username=req.isolation_username,
            socks_password=req.isolation_password,
            dest_host=req.host,
            dest_port=req.port,
            protocol="http-connect",
        )

    async def _serve(self, req: HttpRequest) -> None:
        if req.port == 0:
            # No port (or port 0): C tor refuses it as a protocol violation, at once.
            self._reply_error(EndReason.TORPROTOCOL)
            return
        try:
            if self.limit is not None:
                await self.limit.acquire()
            try:
                await self._connect(req)
            finally:
                if self.limit is not None:
                    self.limit.release()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one client take the daemon down
            log.warning("HTTP tunnel request from %s failed unexpectedly: %r", self._who(), exc)
            self._reply_error(EndReason.MISC)

    async def _connect(self, req: HttpRequest) -> None:
        try:
            transport, _ = await self.tor.create_connection(
                lambda: TorSide(self),
                req.host,
                req.port,
                isolation=self.isolation_key(req),
                timeout=self.policy.connect_timeout,
            )
        except OnionError as exc:
            self.stats.stream_failed(exc)
            # C tor ends failed onion lookups with RESOLVEFAILED.
            log.info("onion request from %s failed: %s", self._who(), self._why(exc))
            self._reply_error(EndReason.RESOLVEFAILED)
            return
        except StreamRefused as exc:
            self.stats.stream_failed(exc)
            log.info("stream to %s refused: %s", self._dest(req), self._why(exc))
            self._reply_error(exc.reason)
            return
        except (TimeoutError, StreamTimeout) as exc:
            self.stats.stream_failed(exc)
            log.info("stream to %s timed out", self._dest(req))
            self._reply_error(EndReason.TIMEOUT)
            return
        except NoPathError as exc:
            self.stats.stream_failed(exc)
            log.warning("no path for %s: %s", self._dest(req), self._why(exc))
            self._reply_error(EndReason.NOROUTE)
            return
        except TorError as exc:
            self.stats.stream_failed(exc)
            log.info("stream to %s failed: %s", self._dest(req), self._why(exc))
            self._reply_error(EndReason.MISC)
            return
        self.stream_opened(transport, connect_ok(_via()))

    # -- helpers ---------------------------------------------------------------------

    def _reply_error(self, reason: int) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.write(connect_failed(reason, _via()))
            self.client.close()

    def _dest(self, req: HttpRequest) -> str:
        return "[scrubbed]" if self.policy.safe_logging else f"{req.host}:{req.port}"

    def _why(self, exc: BaseException) -> str:
        return "[scrubbed]" if self.policy.safe_logging else str(exc)


async def start_http_tunnel_listener(
    tor: TorClient,
    host: str,
    port: int,
    policy: ListenerPolicy,
    *,
    max_connections: int = 8192,
    max_concurrent_requests: int = 1024,
) -> SocksListener:
    """Listen on ``host:port``; a port in use raises OSError."""
    return await start_listener(
        tor,
        host,
        port,
        policy,
        HttpTunnelConnection,
        max_connections=max_connections,
        max_concurrent_requests=max_concurrent_requests,
    )
