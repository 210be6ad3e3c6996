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

from puretor.app.proxied import ProxiedConnection, TorSide
from puretor.app.socks import (
    ListenerPolicy,
    SocksListener,
    SocksServerStats,
    start_listener,
)
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


class TransConnection(ProxiedConnection):
    door = "TransPort"

    def __init__(
        self,
        tor: TorClient,
        policy: ListenerPolicy,
        stats: SocksServerStats,
        limit: asyncio.Semaphore,
    ) -> None:
        super().__init__(tor, policy, stats, limit)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.accept(transport):
            return
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        dest = original_destination(sock) if sock is not None else None
        if dest is None:
            log.warning(
                "TransPort connection with no original destination (not redirected by the "
                "firewall?): closing it."
            )
            transport.abort()
            return
        self.task = asyncio.ensure_future(self._serve(*dest))

    def data_received(self, data: bytes) -> None:
        if not self.relay_to_tor(data):
            self._early_data(data)

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
        self.stream_opened(transport)

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
