"""One Tor stream on a circuit, sans-I/O (tor-spec §6.2–§7.4).

A stream's bytes reach the application through a `StreamSink` (asyncio-Protocol
style callbacks) rather than per-cell event objects: that keeps the hot path to
one call per DATA cell.  Outbound, `write()` packages as many cells as the
stream and circuit windows allow and keeps the rest in a bounded buffer whose
size the caller uses for backpressure.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

from puretor.proto.relaymsg import Connected, End, ResolvedAnswer

if TYPE_CHECKING:
    from puretor.proto.circuit import Circuit
    from puretor.proto.congestion import StreamFlow

STREAM_WINDOW_START = 500
STREAM_WINDOW_INCREMENT = 50
# Past this much unsent data the application is asked to stop writing.
SEND_BUFFER_HIGH_WATER = 64 * 1024


class StreamSink(Protocol):
    """What a stream reports to whoever owns it (the asyncio layer)."""

    def stream_connected(self, connected: Connected) -> None: ...

    def stream_data(self, data: bytes) -> None: ...

    def stream_resolved(self, answers: list[ResolvedAnswer]) -> None: ...

    def stream_ended(self, reason: int, end: End | None, message: str) -> None:
        """The stream is gone: END from the exit, circuit destroyed, or a local abort."""

    def stream_writable(self) -> None:
        """The send buffer drained below the high-water mark: resume writing."""


class StreamState(enum.Enum):
    CONNECTING = "connecting"  # BEGIN / BEGIN_DIR sent, waiting for CONNECTED
    RESOLVING = "resolving"  # RESOLVE sent, waiting for RESOLVED
    OPEN = "open"
    CLOSED = "closed"


class Stream:
    __slots__ = (
        "circuit",
        "stream_id",
        "sink",
        "state",
        "package_window",
        "deliver_window",
        "send_buffer",
        "delivery_paused",
        "close_after_flush",
        "blocked_writer",
        "target",
        "flow",
    )

    def __init__(self, circuit: Circuit, stream_id: int, sink: StreamSink, target: str) -> None:
        self.circuit = circuit
        self.stream_id = stream_id
        self.sink = sink
        self.state = StreamState.CONNECTING
        self.package_window = STREAM_WINDOW_START
        self.deliver_window = STREAM_WINDOW_START
        self.send_buffer = bytearray()
        self.delivery_paused = False
        self.close_after_flush = False
        self.blocked_writer = False
        self.target = target
        # XON/XOFF state on a congestion-controlled circuit (prop 324 §4); None: windows.
        self.flow: StreamFlow | None = None

    # -- application side -------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Queue ``data``; returns True when the caller should stop writing for now."""
        if self.state is StreamState.CLOSED or self.close_after_flush:
            return False
        self.send_buffer += data
        if self.state is StreamState.OPEN:
            self.circuit._schedule_stream(self)
        full = len(self.send_buffer) >= SEND_BUFFER_HIGH_WATER
        if full:
            self.blocked_writer = True
        return full

    def close(self) -> None:
        """Application EOF: send END (DONE) once the pending data has gone out.

        Data written before CONNECTED (optimistic data) is kept too: the CONNECTED
        handler flushes it and then sends the END.
        """
        if self.state is StreamState.CLOSED:
            return
        self.close_after_flush = True
        if not self.send_buffer or self.state is StreamState.RESOLVING:
            self.circuit._end_stream(self, 6)  # END reason DONE

    def abort(self, reason: int = 1) -> None:
        """Drop pending data and end the stream now (END reason, default MISC)."""
        if self.flow is not None:
            self.flow.take_held()  # data held for a paused reader, and a deferred END
            self.flow.end = None
        if self.state is not StreamState.CLOSED:
            self.send_buffer.clear()
            self.circuit._end_stream(self, reason)

    def pause_delivery(self) -> None:
        """The application is not keeping up: stop granting stream SENDMEs.

        On a congestion-controlled circuit, data that arrives meanwhile is held and
        the exit gets an XOFF once too much of it piles up (prop 324 §4).
        """
        self.delivery_paused = True

    def resume_delivery(self) -> None:
        self.delivery_paused = False
        if self.flow is not None:
            self.circuit._resume_flow(self)
        else:
            self.circuit._maybe_stream_sendme(self)

    @property
    def buffered(self) -> int:
        return len(self.send_buffer)
