"""What every door that relays an application's connection to a Tor stream shares: the
SOCKS, HTTP CONNECT and transparent listeners differ only in how they learn where the
stream goes and how they answer.

`ProxiedConnection` is the application side: it counts the connection, applies the
listener's policy, keeps what the application sends before the stream is open (up to
`MAX_EARLY_DATA`, then stops reading) and, once `stream_opened`, relays both ways with
asyncio's flow control mapped onto the stream's.  `TorSide` is the protocol on the Tor
stream, forwarding to the application.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from puretor.config.values import policy_permits

if TYPE_CHECKING:
    from puretor.client import TorClient

log = logging.getLogger("puretor.socks")
NOTICE = 25
# Optimistic data a client may send before the stream is connected.
MAX_EARLY_DATA = 64 * 1024
# How much of the stream's data may wait for a slow application before the stream
# stops reading from Tor.
CLIENT_WRITE_HIGH_WATER = 256 * 1024


class ProxiedConnection(asyncio.Protocol):
    """One application connection to a door; subclasses parse its request (if any) and
    call `stream_opened` with the Tor stream."""

    door = "proxy"  # for log messages: "SOCKS", "HTTP tunnel", "TransPort"

    def __init__(self, tor: TorClient, policy: Any, stats: Any, limit: Any) -> None:
        self.tor = tor
        self.policy = policy
        self.stats = stats
        self.limit = limit
        self.client: asyncio.Transport | None = None
        self.tor_transport: asyncio.Transport | None = None
        self.early = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.source: str | None = None  # address:port, for the control port's STREAM events
        self._done = False

    # -- the application side ----------------------------------------------------------

    def accept(self, transport: asyncio.BaseTransport) -> bool:
        """Count the connection and check the listener's policy; False: refused (and
        the connection is gone)."""
        assert isinstance(transport, asyncio.Transport)
        self.client = transport
        self.stats.active += 1
        self.stats.total += 1
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        if peer and len(peer) >= 2:
            self.source = f"{peer[0]}:{peer[1]}"
        if not policy_permits(self.policy.socks_policy, self.peer):
            log.log(
                NOTICE, "Denying %s connection from untrusted address %s.", self.door, self._who()
            )
            transport.abort()
            return False
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        return True

    def start_handshake_timer(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(
            self.policy.handshake_timeout, self._handshake_timeout
        )

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.task is None and self.client is not None:
            log.info(
                "%s client %s did not finish its request in %.0fs",
                self.door,
                self._who(),
                self.policy.handshake_timeout,
            )
            self.client.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def relay_to_tor(self, data: bytes) -> bool:
        """Forward ``data`` if the stream is open; False: not yet."""
        if self.tor_transport is None:
            return False
        self.stats.bytes_from_client += len(data)
        self.tor_transport.write(data)
        return True

    def _early_data(self, data: bytes) -> None:
        self.early += data
        if len(self.early) > MAX_EARLY_DATA and self.client is not None:
            self.client.pause_reading()

    def eof_received(self) -> bool:
        if self.tor_transport is not None:
            # The application finished sending: END (DONE) once pending data is out;
            # like C tor, the connection then closes (Tor streams have no half-close).
            self.tor_transport.write_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.active -= 1
        self._cancel_timer()
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

    # -- the Tor side --------------------------------------------------------------------

    def stream_opened(self, transport: asyncio.BaseTransport, reply: bytes = b"") -> bool:
        """The stream is open: answer the application with ``reply``, send what it sent
        early, relay from now on.  False if the application went away meanwhile."""
        assert isinstance(transport, asyncio.Transport)
        if self._done or self.client is None or self.client.is_closing():
            transport.abort()
            return False
        self.tor_transport = transport
        self.stats.streams_opened += 1
        if reply:
            self.client.write(reply)
        if self.early:
            self.stats.bytes_from_client += len(self.early)
            transport.write(bytes(self.early))
            self.early.clear()
            self.client.resume_reading()
        return True

    def tor_side_lost(self, exc: Exception | None) -> None:
        if self.client is not None and not self.client.is_closing():
            if exc is None:
                self.client.close()
            else:
                # The stream failed mid-transfer: make the failure visible (RST).
                self.client.abort()

    def _who(self) -> str:
        return "[scrubbed]" if self.policy.safe_logging else self.peer


class TorSide(asyncio.Protocol):
    """The protocol on the Tor stream: forwards to the application."""

    def __init__(self, conn: ProxiedConnection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        client = self.conn.client
        if client is not None and not client.is_closing():
            self.conn.stats.bytes_to_client += len(data)
            client.write(data)

    def eof_received(self) -> bool:
        client = self.conn.client
        if client is not None and not client.is_closing():
            # The exit ended the stream cleanly: finish sending, then close.
            client.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.tor_side_lost(exc)

    def pause_writing(self) -> None:
        if self.conn.client is not None:
            self.conn.client.pause_reading()

    def resume_writing(self) -> None:
        if self.conn.client is not None and not self.conn.client.is_closing():
            self.conn.client.resume_reading()
