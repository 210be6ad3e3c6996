"""Channels over TLS: the only place puretor opens TCP connections.

`ChannelManager.get_channel(target)` returns an open, identity-verified channel
to a relay, reusing one per relay identity.  Every connection goes to an
address taken from a `ChannelTarget` — a relay from the consensus or a
configured authority/fallback — never to a stream's destination.

That is also checked at run time: a `ChannelManager` given an ``allow`` callback
(`TorClient` always gives one) asks it before every new connection and refuses
targets it does not vouch for with a `ChannelError`.  Each connection attempt is
also announced as the audit event ``puretor.channel.connect`` (address, port,
hex identity), so an embedder or a test can watch them with `sys.addaudithook`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from puretor.aio.observe import ChannelEvent, GeneralStatusEvent, RelayRef, new_channel_id
from puretor.aio.reactor import Reactor
from puretor.errors import ChannelError
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuitmux import DEFAULT_HALFLIFE
from puretor.proto.events import ChannelClosed, ChannelOpened
from puretor.proto.memory import relieve
from puretor.ratelimit import RateLimit

if TYPE_CHECKING:
    import socket

log = logging.getLogger("puretor.channel")

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 20.0
NETINFO_NOTICE_SKEW = 3600  # seconds of clock difference before C tor says so
# Cells handed to the TLS transport per write: a bulk circuit's cells wait in the
# channel's scheduler, not in a transport buffer a quiet circuit cannot jump.
FLUSH_CELLS = 256
# Over MaxMemInQueues with nothing left to close: say so at most once a minute.
_oom_log = RateLimit(60.0)


@dataclass(frozen=True, slots=True)
class ChannelTarget:
    """Where a relay's ORPort is and who it must prove to be.  An empty ``rsa_id``: any
    identity (a Bridge line without fingerprint: the channel then learns it)."""

    address: str
    or_port: int
    rsa_id: bytes
    ed_id: bytes | None = None
    nickname: str = ""

    def describe(self) -> str:
        name = self.nickname or "relay"
        return f"{name} ${self.rsa_id.hex().upper()[:8]} at {self.address}:{self.or_port}"


def _tls_context() -> ssl.SSLContext:
    # Relays present self-signed certificates; the CERTS cell binds the TLS
    # certificate to the relay's identity instead (tor-spec §4.2).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# errno -> C tor's orconn end reason (reasons.c errno_to_orconn_end_reason).
_ERRNO_REASONS = {
    errno.ENETUNREACH: "NOROUTE",
    errno.EHOSTUNREACH: "NOROUTE",
    errno.ECONNREFUSED: "CONNECTREFUSED",
    errno.ECONNRESET: "CONNECTRESET",
    errno.ETIMEDOUT: "TIMEOUT",
    errno.ENOBUFS: "RESOURCELIMIT",
    errno.EMFILE: "RESOURCELIMIT",
    errno.ENFILE: "RESOURCELIMIT",
}


def _connect_failure(exc: BaseException) -> tuple[str, str]:
    """(C tor reason, human-readable cause) for a failed connect."""
    if isinstance(exc, TimeoutError) and not getattr(exc, "errno", None):
        return "TIMEOUT", "Connection timed out"
    if isinstance(exc, ssl.SSLError):
        return "TLS_ERROR", exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return _ERRNO_REASONS.get(exc.errno, "IOERROR"), os.strerror(exc.errno)
    return "MISC", str(exc) or type(exc).__name__


def _channel_key(target: ChannelTarget) -> bytes:
    """Channels are shared per relay identity; one to an unknown identity per address."""
    return target.rsa_id or f"{target.address}:{target.or_port}".encode()


class ChannelProtocol(asyncio.BufferedProtocol):
    """Moves bytes between a TLS transport and a sans-I/O `Channel`.

    A buffered protocol: asyncio's TLS layer then decrypts straight into one buffer
    kept for the channel's life, instead of allocating a fresh bytes object per TLS
    record and joining them per socket read.  After each read the `Reactor` delivers
    what the core said and flushes what it wants to send - in one write per channel.

    The buffer starts small and doubles whenever a read fills it, up to asyncio's own
    read size: a bulk channel reads 256 KiB at a time, while a directory or idle channel
    keeps 16 KiB (each byte of a buffer is resident memory: bytearray zero-fills it).
    """

    _READ_BUFFER_MIN = 16 * 1024
    _READ_BUFFER_MAX = 256 * 1024  # asyncio's own read size for TLS transports

    def __init__(self, channel: Channel, reactor: Reactor, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.reactor = reactor
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self._read_view = memoryview(bytearray(self._READ_BUFFER_MIN))
        self._write_paused = False
        channel.owner = self
        self.event: ChannelEvent | None = None  # the last ORCONN state reported

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.channel.tls_cert_der = der
        self.channel.start(time.time())
        self.reactor.run()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.reactor.observer.bytes_read += nbytes
        view = self._read_view
        self.data_received(view[:nbytes])
        if nbytes == len(view) and nbytes < self._READ_BUFFER_MAX:
            self._read_view = memoryview(bytearray(2 * nbytes))  # a bulk transfer: read more

    def data_received(self, data: bytes | memoryview) -> None:
        self.channel.receive_data(data, time.time())
        self.reactor.run()

    def eof_received(self) -> bool | None:
        self.channel.close("relay closed the connection")
        self.reactor.run()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.report("CLOSED", "DONE" if exc is None else "IOERROR")
        self.channel.close(f"connection lost: {exc}" if exc else "connection closed")
        self.reactor.forget(self.channel)
        self.reactor.run()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.channel.has_output:
            self.flush()

    def report(self, status: str, reason: str | None = None) -> None:
        """Tell the observer this connection's new state (ORCONN), once per state."""
        event = self.event
        if event is None or event.status == status or event.status in ("FAILED", "CLOSED"):
            return
        self.event = ChannelEvent(event.id, status, event.relay, event.address, reason)
        self.reactor.observer.emit(self.event)

    # the reactor
    def flush(self) -> None:
        """Write what the channel's scheduler gives us now; while the TLS transport's
        buffer is full, leave the rest in the scheduler (where a quiet circuit can still
        overtake a bulk one)."""
        transport = self.transport
        channel = self.channel
        while (
            transport is not None
            and not transport.is_closing()
            and not self._write_paused
            and channel.has_output
        ):
            data = channel.data_to_send(time.time(), FLUSH_CELLS)
            if not data:
                break
            self.reactor.observer.bytes_written += len(data)
            transport.write(data)  # may call pause_writing at once

    def handle_event(self, event: ChannelOpened | ChannelClosed) -> None:
        if isinstance(event, ChannelOpened):
            if not self.opened.done():
                self.opened.set_result(None)
            return
        if not self.opened.done():
            self.opened.set_exception(ChannelError(event.reason))
        if self.transport is not None:
            self.flush()
            self.transport.close()


class ChannelManager:
    """One open channel per relay identity, opened on demand."""

    def __init__(
        self,
        allow: Callable[[ChannelTarget], str | None] | None = None,
        reactor: Reactor | None = None,
        priority_halflife: Callable[[], float] | None = None,
        max_mem_in_queues: int = 0,
    ) -> None:
        self.reactor = reactor or Reactor()
        # Queued cell data of every channel, against MaxMemInQueues (0: no limit).
        self.queue_budget = self.reactor.queue_budget
        self.queue_budget.limit = max_mem_in_queues
        self.reactor.relieve_memory = self._relieve_memory
        self._relief_idle_until = 0.0
        # The circuit scheduler's EWMA half-life for each new channel (torrc/consensus).
        self.priority_halflife = priority_halflife or (lambda: DEFAULT_HALFLIFE)
        self._channels: dict[bytes, Channel] = {}
        self._pending: dict[bytes, asyncio.Task[Channel]] = {}
        self.connects = 0  # channels opened (for tests and stats)
        # allow(target) -> None to connect, or why not. None: every target (tests, tools).
        self.allow = allow
        self.refused = 0  # connections refused by `allow`
        self.trusted_ids: frozenset[bytes] = frozenset()  # the authorities' identities
        # connector(target) -> None to connect directly, or an awaitable of a connected
        # socket already through a proxy (a pluggable transport's SOCKS5 port): TLS then
        # runs over that socket.  Set by TorClient for bridges behind a transport.
        self.connector: Callable[[ChannelTarget], Awaitable[socket.socket] | None] = lambda target: (
            None
        )

    async def get_channel(self, target: ChannelTarget) -> Channel:
        key = _channel_key(target)
        chan = self._channels.get(key)
        if chan is not None and chan.state is ChannelState.OPEN:
            return chan
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._open(target))
            self._pending[key] = task
            task.add_done_callback(lambda _t: self._pending.pop(key, None))
        return await asyncio.shield(task)

    async def _open(self, target: ChannelTarget) -> Channel:
        self._check_allowed(target)  # right before the one connect: nothing bypasses it
        loop = asyncio.get_running_loop()
        channel = Channel(
            peer_address=target.address,
            expected_rsa_id=target.rsa_id or None,
            expected_ed_id=target.ed_id,
            events=self.reactor.events,
            flush_wanted=self.reactor.flush_wanted,
            priority_halflife=self.priority_halflife(),
            queue_budget=self.queue_budget,
        )
        proto = ChannelProtocol(channel, self.reactor, loop)
        proto.event = ChannelEvent(
            new_channel_id(),
            "LAUNCHED",
            RelayRef(target.rsa_id.hex().upper(), target.nickname),
            f"{target.address}:{target.or_port}",
        )
        self.reactor.observer.emit(proto.event)
        sys.audit("puretor.channel.connect", target.address, target.or_port, target.rsa_id.hex())
        try:
            await asyncio.wait_for(self._connect(loop, proto, target), CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            reason, warning = _connect_failure(exc)
            proto.report("FAILED", reason)
            state = (
                "handshaking (TLS) with SSL state (unknown)"
                if isinstance(exc, ssl.SSLError)
                else "connect()ing with SSL state (No SSL object)"
            )
            raise ChannelError(
                f"cannot connect to {target.describe()}: {exc!r}",
                reason,
                warning=warning,
                state=state,
            ) from exc
        try:
            await asyncio.wait_for(asyncio.shield(proto.opened), HANDSHAKE_TIMEOUT)
        except TimeoutError as exc:
            proto.report("FAILED", "TIMEOUT")
            channel.close("link handshake timed out")
            self.reactor.run()
            raise ChannelError(
                f"link handshake with {target.describe()} timed out",
                "TIMEOUT",
                warning="Connection timed out",
                state="handshaking (Tor, v3 handshake)",
            ) from exc
        except ChannelError as exc:
            identity = "identity" in str(exc).lower() or "certs" in str(exc).lower()
            proto.report("FAILED", "IDENTITY" if identity else "MISC")
            raise ChannelError(
                f"link handshake with {target.describe()} failed: {exc}",
                "IDENTITY" if identity else "MISC",
                warning=str(exc),
                state="handshaking (Tor, v3 handshake)",
            ) from exc
        self.connects += 1
        proto.report("CONNECTED")
        if channel.relay_time:
            self._check_clock(channel.relay_time - time.time(), target)
        self._channels[_channel_key(target)] = channel
        self.reactor.watch(channel)
        log.debug("channel open to %s (link protocol %d)", target.describe(), channel.link_protocol)
        return channel

    def _check_clock(self, skew: float, target: ChannelTarget) -> None:
        """NETINFO's time against ours (C tor: warn past an hour; a directory authority's
        word is trusted enough for STATUS_GENERAL CLOCK_SKEW, another relay's only logs)."""
        if abs(skew) <= NETINFO_NOTICE_SKEW:
            return
        trusted = target.rsa_id in self.trusted_ids
        source = f"OR:{target.address}:{target.or_port}"
        log.log(
            logging.WARNING if trusted else logging.INFO,
            "Received NETINFO cell with skewed time (%s): It seems that our clock is %s by "
            "%d seconds, or that theirs is %s%s. Tor requires an accurate clock to work: "
            "please check your time, timezone, and date settings.",
            source,
            "ahead" if skew < 0 else "behind",
            abs(int(skew)),
            "behind" if skew < 0 else "ahead",
            "" if trusted else ", or they are sending us the wrong time",
        )
        if trusted:
            arguments = (("SKEW", str(int(-skew))), ("SOURCE", source))
            self.reactor.observer.emit(GeneralStatusEvent("WARN", "CLOCK_SKEW", arguments))

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, proto: ChannelProtocol, target: ChannelTarget
    ) -> None:
        through = self.connector(target)
        if through is None:
            await loop.create_connection(
                lambda: proto,
                target.address,
                target.or_port,
                ssl=_tls_context(),
                server_hostname="",
            )
            return
        sock = await through
        try:
            await loop.create_connection(
                lambda: proto, sock=sock, ssl=_tls_context(), server_hostname=""
            )
        except BaseException:
            sock.close()
            raise

    def _relieve_memory(self) -> None:
        """Over MaxMemInQueues: close the circuits holding the oldest queued data."""
        now = time.monotonic()
        if now < self._relief_idle_until:
            return
        relief = relieve(self.queue_budget, list(self._channels.values()))
        if relief is None:
            return
        if not relief.tunnels_closed:
            self._relief_idle_until = now + 1.0  # nothing of ours to close: not every pass
            if not _oom_log.allow(now):
                return
        log.warning(
            "We're low on memory (queued cell data: %d bytes, MaxMemInQueues %d). Killing "
            "circuits with over-long queues: removed %d bytes by killing %d circuits; %d "
            "circuits remain alive.",
            relief.total_before,
            relief.limit,
            relief.bytes_removed,
            relief.tunnels_closed,
            relief.tunnels_left,
        )

    def _check_allowed(self, target: ChannelTarget) -> None:
        """Fail closed: refuse a target the ``allow`` callback does not vouch for."""
        if self.allow is None:
            return
        try:
            why = self.allow(target)
        except Exception as exc:  # a broken check refuses; it never lets through
            why = f"the connection check failed: {exc!r}"
        if why is not None:
            self.refused += 1
            log.warning("Refusing to connect to %s: %s", target.describe(), why)
            raise ChannelError(
                f"refusing to connect to {target.describe()}: {why}",
                "MISC",
                warning=f"refused by our own connection check: {why}",
            )

    def has_open_channel(self) -> bool:
        return any(c.state is ChannelState.OPEN for c in self._channels.values())

    def drop(self, rsa_id: bytes) -> None:
        chan = self._channels.pop(rsa_id, None)
        if chan is not None:
            chan.close("dropped")
            self.reactor.run()

    def close_all(self) -> None:
        for chan in list(self._channels.values()):
            chan.close("shutting down")
        self._channels.clear()
        for task in list(self._pending.values()):
            task.cancel()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to deliver to
            self.reactor.run()
