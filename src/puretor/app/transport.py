"""TransPort (Linux): connections a firewall redirected here go through Tor to where they
were going (C tor's TransPort with TransProxyType default: netfilter REDIRECT/DNAT).

The original destination comes from the kernel's connection tracking
(``SO_ORIGINAL_DST`` / ``IP6T_SO_ORIGINAL_DST``).  A connection without one - not
redirected, or made straight to the port - is closed: fail closed, never a guess.  The
stream is opened with `TorClient.create_connection` and relayed as the SOCKS listener
relays; the listener shares its limits (SocksPolicy, cap, concurrent requests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from puretor.app.socks import (
    MAX_EARLY_DATA,
    NOTICE,
    ListenerPolicy,
    SocksListener,
    SocksServerStats,
    TorSide,
    start_listener,
)
from puretor.config.values import policy_permits
from puretor.errors import TorError
from puretor.path.isolation import isolation_key

if TYPE_CHECKING:
    from puretor.client import TorClient

log = logging.getLogger("puretor.trans")

# Linux's numbers (no `socket` import: this module opens nothing, it only asks the kernel).
SOL_IP = 0
SOL_IPV6 = 41
AF_INET6 = 10
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h


def original_destination(sock: Any) -> tuple[str, int] | None:
    """Where a redirected connection was going, or None when it was not redirected."""
    try:
        if sock.family == AF_INET6:
            raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = str(ipaddress.IPv6Address(raw[8:24]))
        else:
            raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = str(ipaddress.IPv4Address(raw[4:8]))
    except (OSError, ValueError):
        return None
    mapped = ipaddress.ip_address(address)
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        address = str(mapped.ipv4_mapped)
    own = sock.getsockname()[:2]
    if (address, port) == (ipaddress.ip_address(own[0]).compressed, own[1]):
        return None  # straight to the port: no destination at all
    return address, port


class TransConnection(asyncio.Protocol):
    def __init__(
        self,
        tor: TorClient,
        policy: ListenerPolicy,
        stats: SocksServerStats,
        limit: asyncio.Semaphore,
    ) -> None:
        self.tor = tor
        self.policy = policy
        self.stats = stats
        self.limit = limit
        self.client: asyncio.Transport | None = None
        self.tor_transport: asyncio.Transport | None = None
        self.early = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.peer = "?"
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = transport
        self.stats.active += 1
        self.stats.total += 1
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        if not policy_permits(self.policy.socks_policy, self.peer):
            log.log(NOTICE, "Denying TransPort connection from untrusted address.")
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        dest = original_destination(sock) if sock is not None else None
        if dest is None:
            log.warning(
                "TransPort connection with no original destination (not redirected by the "
                "firewall?): closing it."
            )
            transport.abort()
            return
        transport.set_write_buffer_limits(high=256 * 1024)
        self.task = asyncio.ensure_future(self._serve(*dest))

    def data_received(self, data: bytes) -> None:
        if self.tor_transport is not None:
            self.stats.bytes_from_client += len(data)
            self.tor_transport.write(data)
            return
        self.early += data
        if len(self.early) > MAX_EARLY_DATA and self.client is not None:
            self.client.pause_reading()

    def eof_received(self) -> bool:
        if self.tor_transport is not None:
            self.tor_transport.write_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.active -= 1
        self._done = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.tor_transport is not None and not self.tor_transport.is_closing():
            self.tor_transport.close()

    def pause_writing(self) -> None:
        if self.tor_transport is not None:
            self.tor_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.tor_transport is not None:
            self.tor_transport.resume_reading()

    def isolation_key(self, host: str, port: int) -> Hashable:
        return isolation_key(
            listener_id=self.policy.listener_id,
            listener_flags=self.policy.flags,
            client_addr=self.peer,
            socks_username=None,
            socks_password=None,
            dest_host=host,
            dest_port=port,
            protocol="trans",
        )

    async def _serve(self, host: str, port: int) -> None:
        try:
            async with self.limit:
                transport, _ = await self.tor.create_connection(
                    lambda: TorSide(self),
                    host,
                    port,
                    isolation=self.isolation_key(host, port),
                    timeout=self.policy.connect_timeout,
                )
        except asyncio.CancelledError:
            raise
        except (TorError, TimeoutError) as exc:
            self.stats.stream_failed(exc)
            log.info(
                "TransPort stream failed: %s", "[scrubbed]" if self.policy.safe_logging else exc
            )
            self._abort()
            return
        except Exception as exc:  # never let one client take the daemon down
            log.warning("TransPort stream failed unexpectedly: %r", exc)
            self._abort()
            return
        assert isinstance(transport, asyncio.Transport)
        if self._done or self.client is None or self.client.is_closing():
            transport.abort()
            return
        self.tor_transport = transport
        self.stats.streams_opened += 1
        if self.early:
            self.stats.bytes_from_client += len(self.early)
            transport.write(bytes(self.early))
            self.early.clear()
            self.client.resume_reading()

    def tor_side_lost(self, exc: Exception | None) -> None:
        if self.client is not None and not self.client.is_closing():
            if exc is None:
                self.client.close()
            else:
                self.client.abort()

    def _abort(self) -> None:
        # No protocol to say why: a reset, as C tor gives a transparent client.
        if self.client is not None and not self.client.is_closing():
            self.client.abort()


async def start_trans_listener(
    tor: TorClient,
    host: str,
    port: int,
    policy: ListenerPolicy,
    *,
    max_connections: int = 8192,
    max_concurrent_requests: int = 1024,
) -> SocksListener:
    """Listen on ``host:port`` for redirected connections; a port in use raises OSError."""
    return await start_listener(
        tor,
        host,
        port,
        policy,
        TransConnection,
        max_connections=max_connections,
        max_concurrent_requests=max_concurrent_requests,
    )
