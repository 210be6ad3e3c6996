"""Tor streams as asyncio transports.

`TorStreamTransport` is the owner of a core `Stream` - the `Reactor` hands it the
stream's events - and an `asyncio.Transport` for the application's protocol, so DATA
reaches `protocol.data_received` with no queue or task in between (one call per stream
per run of cells, after the core call returned), and asyncio's flow control maps onto
Tor's: `pause_reading` withholds stream SENDMEs (or XOFFs the exit), a full send buffer
calls `protocol.pause_writing`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from puretor.aio.reactor import Reactor
from puretor.errors import StreamError, StreamRefused, StreamTimeout
from puretor.proto.relaymsg import Connected, End, EndReason, ResolvedAnswer
from puretor.proto.streams import Stream


class TorStreamTransport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop, target: str, reactor: Reactor) -> None:
        super().__init__()
        self._loop = loop
        self.reactor = reactor
        self.target = target
        self.stream: Stream | None = None
        self.protocol: asyncio.BaseProtocol | None = None
        self.connected: asyncio.Future[Connected] = loop.create_future()
        self.resolved: asyncio.Future[list[ResolvedAnswer]] = loop.create_future()
        self.end_reason: int | None = None
        self._closing = False
        self._lost = False
        self._extra: dict[str, Any] = {}
        self._write_paused = False
        self._early: list[bytes] = []
        self._end_before_attach: tuple[int, End | None, Exception] | None = None
        self.stream_event_id = 0  # the observer's id for it, once connected
        self.bytes_read = 0  # application bytes, for StreamBandwidthEvent
        self.bytes_written = 0
        self.bytes_sampled = (0, 0)  # (read, written) at the last sample

    # -- StreamSink --------------------------------------------------------------

    def stream_connected(self, connected: Connected) -> None:
        self._extra["exit_address"] = connected.address
        if not self.connected.done():
            self.connected.set_result(connected)

    def stream_data(self, data: bytes) -> None:
        self.bytes_read += len(data)  # one add per run of cells (STREAM_BW)
        proto = self.protocol
        if proto is not None:
            proto.data_received(data)  # type: ignore[attr-defined]
        else:
            # CONNECTED and the server's first bytes (a banner) can arrive in one run,
            # before the caller attaches its protocol: keep them (bounded by the
            # stream window) and hand them over in attach().
            self._early.append(data)

    def stream_resolved(self, answers: list[ResolvedAnswer]) -> None:
        if not self.resolved.done():
            self.resolved.set_result(answers)

    def stream_ended(self, reason: int, end: End | None, message: str) -> None:
        self.end_reason = reason
        exc: StreamError
        if reason == EndReason.TIMEOUT and end is None:
            exc = StreamTimeout(f"{message} (the exit did not answer)")  # our deadline
        else:
            exc = StreamRefused(f"{message} ({EndReason.describe(reason)})", reason)
        if end is not None and end.address:
            self._extra["end_address"] = end.address
        for fut in (self.connected, self.resolved):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: the other future may be unused
        if self.protocol is None:
            self._end_before_attach = (reason, end, exc)  # replayed by attach()
        elif not self._lost:
            if reason == EndReason.DONE and end is not None:
                # A clean end from the exit: the peer closed its side.
                keep_open = self.protocol.eof_received()  # type: ignore[attr-defined]
                if not keep_open:
                    self._connection_lost(None)
            else:
                self._connection_lost(exc)

    def stream_writable(self) -> None:
        if self._write_paused and self.protocol is not None:
            self._write_paused = False
            self.protocol.resume_writing()

    # -- asyncio.Transport ---------------------------------------------------------

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol
        protocol.connection_made(self)
        if self._early:
            early, self._early = b"".join(self._early), []
            protocol.data_received(early)  # type: ignore[attr-defined]
        if self._end_before_attach is not None:
            reason, end, _exc = self._end_before_attach
            self._end_before_attach = None
            self.stream_ended(reason, end, "stream ended by exit")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.stream is None:
            return
        full = self.stream.write(bytes(data))
        self.bytes_written += len(data)
        self.reactor.kick()
        if full and not self._write_paused and self.protocol is not None:
            self._write_paused = True
            self.protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.reactor.kick()

    def get_write_buffer_size(self) -> int:
        return self.stream.buffered if self.stream is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        if self.stream is not None:
            self.stream.pause_delivery()

    def resume_reading(self) -> None:
        if self.stream is not None:
            self.stream.resume_delivery()
            self.reactor.kick()

    def is_reading(self) -> bool:
        return self.stream is not None and not self.stream.delivery_paused

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.stream is not None:
            self.stream.close()
            self.reactor.kick()
        self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self._closing = True
        if self.stream is not None:
            self.stream.abort(EndReason.MISC)
            self.reactor.kick()
        self._connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self.stream is not None:
            self.stream.discard_received()  # held for a reader that is now gone
        if self.stream_event_id:
            reason = EndReason.describe(self.end_reason) if self.end_reason else "DONE"
            self.reactor.observer.stream(self.stream_event_id, "CLOSED", reason=reason)
        if self.protocol is not None:
            self.protocol.connection_lost(exc)


__all__ = ["TorStreamTransport", "StreamError"]
