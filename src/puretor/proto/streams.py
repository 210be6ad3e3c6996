"""The streams of a tunnel, sans-I/O (tor-spec §6.2-§7.4, proposal 324 §4).

`StreamMap` owns every stream of one tunnel: their IDs, their state machine (a table,
as h11's ``_state.py``), their windows (stream SENDMEs) or, on a congestion-controlled
tunnel, their XON/XOFF flow control, and the batching of their data: all DATA for a
stream in one run of cells becomes one `StreamData` event.  What it sends goes through
its `Tunnel`, which picks the circuit.

`Stream` is the application's handle: ``write``, ``close``, ``abort``,
``pause_delivery`` / ``resume_delivery``.
"""

from __future__ import annotations

import contextlib
import enum
from collections import deque
from typing import TYPE_CHECKING, Any

from puretor.errors import RemoteProtocolError
from puretor.proto.congestion import (
    UNLIMITED_WINDOW,
    StreamFlow,
    decode_xon,
    encode_xoff,
    encode_xon,
)
from puretor.proto.events import (
    StreamConnected,
    StreamData,
    StreamEnded,
    StreamIncoming,
    StreamResolved,
    StreamWritable,
)
from puretor.proto.relaymsg import (
    EndReason,
    RelayCommand,
    decode_begin,
    decode_connected,
    decode_end,
    decode_resolved,
    encode_end,
)

if TYPE_CHECKING:
    from puretor.proto.congestion import CCParams
    from puretor.proto.tunnel import Tunnel

STREAM_WINDOW_START = 500
STREAM_WINDOW_INCREMENT = 50
# Past this much unsent data the application is asked to stop writing.
SEND_BUFFER_HIGH_WATER = 64 * 1024

_CMD_DATA = RelayCommand.DATA.value


class StreamState(enum.Enum):
    CONNECTING = "connecting"  # BEGIN / BEGIN_DIR sent, waiting for CONNECTED
    RESOLVING = "resolving"  # RESOLVE sent, waiting for RESOLVED
    OPEN = "open"
    CLOSED = "closed"


# What each message from the exit does to a stream in each state: the next state, or the
# protocol violation it is (it closes the whole circuit).  A pair that is missing means
# the message is dropped.
_S = StreamState
_TRANSITIONS: dict[tuple[StreamState, int], StreamState | str] = {
    (_S.CONNECTING, RelayCommand.CONNECTED): _S.OPEN,
    (_S.CONNECTING, RelayCommand.DATA): "DATA before CONNECTED",
    (_S.CONNECTING, RelayCommand.END): _S.CLOSED,
    (_S.CONNECTING, RelayCommand.RESOLVED): "RESOLVED for a stream that did not RESOLVE",
    (_S.CONNECTING, RelayCommand.SENDME): _S.CONNECTING,
    (_S.CONNECTING, RelayCommand.XON): _S.CONNECTING,
    (_S.CONNECTING, RelayCommand.XOFF): _S.CONNECTING,
    (_S.RESOLVING, RelayCommand.RESOLVED): _S.CLOSED,
    (_S.RESOLVING, RelayCommand.END): _S.CLOSED,
    (_S.RESOLVING, RelayCommand.CONNECTED): "CONNECTED on a stream that is not connecting",
    (_S.OPEN, RelayCommand.DATA): _S.OPEN,
    (_S.OPEN, RelayCommand.END): _S.CLOSED,
    (_S.OPEN, RelayCommand.SENDME): _S.OPEN,
    (_S.OPEN, RelayCommand.XON): _S.OPEN,
    (_S.OPEN, RelayCommand.XOFF): _S.OPEN,
    (_S.OPEN, RelayCommand.CONNECTED): "CONNECTED on a stream that is not connecting",
    (_S.OPEN, RelayCommand.RESOLVED): "RESOLVED for a stream that did not RESOLVE",
}


def next_state(state: StreamState, command: int) -> StreamState | None:
    """The state after ``command`` arrives; None: drop it.  Raises on a violation."""
    outcome = _TRANSITIONS.get((state, command))
    if isinstance(outcome, str):
        raise RemoteProtocolError(outcome)
    return outcome


class Stream:
    """One stream of a tunnel, as the application sees it."""

    __slots__ = (
        "map",
        "stream_id",
        "owner",
        "target",
        "state",
        "package_window",
        "deliver_window",
        "send_buffer",
        "delivery_paused",
        "close_after_flush",
        "blocked_writer",
        "flow",
        "deadline",
        "accepting",
    )

    def __init__(self, streams: StreamMap, stream_id: int, owner: Any, target: str) -> None:
        self.map = streams
        self.stream_id = stream_id
        self.owner = owner  # whatever the application attached: events name the stream
        self.target = target
        self.state = StreamState.CONNECTING
        self.package_window = STREAM_WINDOW_START
        self.deliver_window = STREAM_WINDOW_START
        self.send_buffer = bytearray()
        self.delivery_paused = False
        self.close_after_flush = False
        self.blocked_writer = False
        # XON/XOFF state on a congestion-controlled tunnel (prop 324 §4); None: windows.
        self.flow: StreamFlow | None = None
        # When the exit must have answered BEGIN/RESOLVE by (the tunnel's clock); None: no limit.
        self.deadline: float | None = None
        # Opened by the far end and not yet answered with CONNECTED (no DATA goes out).
        self.accepting = False

    def write(self, data: bytes) -> bool:
        """Queue ``data``; True when the caller should stop writing for now."""
        return self.map.write(self, data)

    def close(self) -> None:
        """Application EOF: END (DONE) once the pending data has gone out."""
        self.map.close(self)

    def accept(self) -> None:
        """Answer a stream the far end opened (`StreamIncoming`) with CONNECTED."""
        self.map.accept(self)

    def abort(self, reason: int = EndReason.MISC) -> None:
        """Drop pending data and end the stream now."""
        self.map.abort(self, reason)

    def pause_delivery(self) -> None:
        """The application is not keeping up: stop granting stream SENDMEs (or, on a
        congestion-controlled tunnel, hold data and XOFF the exit once too much piles up)."""
        self.delivery_paused = True

    def discard_received(self) -> None:
        """The application will not read any more: drop data held for it."""
        self.map.discard_received(self)

    def resume_delivery(self) -> None:
        self.delivery_paused = False
        self.map.resume(self)

    @property
    def buffered(self) -> int:
        return len(self.send_buffer)

    @property
    def tunnel(self) -> Tunnel:
        return self.map.tunnel


class StreamMap:
    """Every stream of one tunnel."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.streams: dict[int, Stream] = {}
        self.ready: deque[Stream] = deque()  # streams with data to package, in turn
        self._next_id = 1
        self._pending: dict[Stream, list[Any]] = {}  # this run's data, per stream
        self._cached: Stream | None = None  # the stream of the last DATA (fast lookup)
        self._xon_due: dict[Stream, None] = {}  # resumed after our XOFF: XON at next flush
        # Ended streams still holding data for their reader (it arrived before the END):
        # still counted against MaxMemInQueues until the reader takes or discards it.
        self.ended_holding: dict[Stream, None] = {}

    def __len__(self) -> int:
        return len(self.streams)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self.streams

    def __iter__(self) -> Any:
        return iter(list(self.streams))

    def __getitem__(self, stream_id: int) -> Stream:
        return self.streams[stream_id]

    def values(self) -> list[Stream]:
        return list(self.streams.values())

    def get(self, stream_id: int) -> Stream | None:
        return self.streams.get(stream_id)

    # -- opening -----------------------------------------------------------------------

    def new(self, owner: Any, target: str, *, flow_controlled: bool) -> Stream:
        stream = Stream(self, self._allocate_id(), owner, target)
        if flow_controlled:
            # Flow control replaces the stream windows (prop 324 §4): no stream SENDMEs
            # either way; XON/XOFF limit what the exit sends and what we send.
            stream.flow = StreamFlow()
            stream.package_window = UNLIMITED_WINDOW
            stream.deliver_window = UNLIMITED_WINDOW
        self.streams[stream.stream_id] = stream
        return stream

    def _allocate_id(self) -> int:
        for _ in range(65535):
            sid = self._next_id
            self._next_id = sid % 65535 + 1
            if sid not in self.streams:
                return sid
        raise RuntimeError("no free stream ids on this circuit")

    # -- what arrives ------------------------------------------------------------------

    def data(self, stream_id: int, pieces: list[Any], cells: int) -> None:
        """DATA for ``stream_id``: ``pieces`` (bytes or views into the run, valid until
        `flush`) of ``cells`` cells, already counted against the circuit window."""
        stream = self._cached
        if stream is None or stream.stream_id != stream_id:
            stream = self.streams.get(stream_id)
            if stream is None:
                return  # a stream we closed: its DATA still counted for the circuit
            self._cached = stream
        if stream.state is not StreamState.OPEN:
            next_state(stream.state, _CMD_DATA)  # raises for a stream still connecting
            return
        window = stream.deliver_window - cells
        if window < 0:
            # As C tor (relay.c): a stream window below 0 is a protocol error that kills
            # the circuit, not just the stream (spec-map §4.1).
            raise RemoteProtocolError("relay overran the stream deliver window")
        stream.deliver_window = window
        flow = stream.flow
        if flow is not None and (stream.delivery_paused or flow.held_bytes):
            self._hold(stream, flow, b"".join(pieces))
            return
        chunks = self._pending.get(stream)
        if chunks is None:
            self._pending[stream] = pieces
        else:
            chunks.extend(pieces)

    def message(self, stream_id: int, command: int, data: bytes) -> None:
        """CONNECTED, END, RESOLVED, SENDME, XON or XOFF for ``stream_id``; BEGIN on a
        tunnel that accepts streams from the far end."""
        stream = self.streams.get(stream_id)
        if command == RelayCommand.BEGIN:
            self._incoming(stream, stream_id, data)
            return
        if stream is None:
            return
        if self._pending:
            self.flush()  # DATA that came before this message goes first
        new_state = next_state(stream.state, command)
        if new_state is None:
            return
        if command == RelayCommand.SENDME:
            self._stream_sendme(stream)
        elif command in (RelayCommand.XON, RelayCommand.XOFF):
            self._xon_xoff(stream, command, data)
        elif command == RelayCommand.CONNECTED:
            stream.state = StreamState.OPEN
            stream.deadline = None
            self.tunnel.emit(StreamConnected(stream, decode_connected(data)))
            if stream.send_buffer:
                self.tunnel.schedule(stream)
            elif stream.close_after_flush:
                self.end(stream, EndReason.DONE)
        elif command == RelayCommand.END:
            end = decode_end(data)
            self.forget(stream)
            flow = stream.flow
            if flow is not None and flow.held_bytes:
                # Data held for a paused reader goes first (C tor flushes the edge
                # connection's outbuf before closing it): END when it resumes.
                flow.end = end
                return
            self.tunnel.emit(StreamEnded(stream, end.reason, end, "stream ended by exit"))
        elif command == RelayCommand.RESOLVED:
            self.forget(stream)
            self.tunnel.emit(StreamResolved(stream, decode_resolved(data)))

    def _incoming(self, stream: Stream | None, stream_id: int, data: bytes) -> None:
        limit = self.tunnel.accept_streams
        if limit is None:
            raise RemoteProtocolError("BEGIN on a circuit that does not accept streams")
        if stream is not None:
            raise RemoteProtocolError(f"BEGIN for stream {stream_id}, which is already open")
        try:
            host, port, _flags = decode_begin(data)
        except ValueError:
            self.tunnel.send_relay(RelayCommand.END, stream_id, encode_end(EndReason.TORPROTOCOL))
            return
        if limit and len(self.streams) >= limit:
            self.tunnel.streams_over_limit(stream_id)
            return
        stream = Stream(self, stream_id, None, f"{host}:{port}")
        stream.state = StreamState.OPEN
        stream.accepting = True
        if self.tunnel.cc is not None:
            stream.flow = StreamFlow()
            stream.package_window = UNLIMITED_WINDOW
            stream.deliver_window = UNLIMITED_WINDOW
        self.streams[stream_id] = stream
        self.tunnel.emit(StreamIncoming(self.tunnel, stream, host, port))

    def accept(self, stream: Stream) -> None:
        if stream.state is not StreamState.OPEN or not stream.accepting:
            return
        stream.accepting = False
        self.tunnel.send_relay(RelayCommand.CONNECTED, stream.stream_id, b"")
        if stream.send_buffer:
            self.tunnel.schedule(stream)

    def flush(self) -> None:
        """End of a run: one `StreamData` per stream, then stream SENDMEs (if not paused)."""
        pending = self._pending
        while pending:
            batch = list(pending.items())
            pending.clear()
            for stream, chunks in batch:
                if stream.state is not StreamState.OPEN:
                    continue
                data = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
                flow = stream.flow
                if flow is not None and (stream.delivery_paused or flow.held_bytes):
                    self._hold(stream, flow, data)
                    continue
                self.tunnel.emit(StreamData(stream, data))
                if not stream.delivery_paused:
                    self._grant_stream_sendmes(stream)

    def _stream_sendme(self, stream: Stream) -> None:
        if stream.flow is not None:
            # As C tor (sendme_process_stream_level): a protocol violation.
            raise RemoteProtocolError("stream SENDME on a congestion-controlled circuit")
        stream.package_window += STREAM_WINDOW_INCREMENT
        if stream.package_window > STREAM_WINDOW_START:
            raise RemoteProtocolError("stream SENDME overflowed the stream window")
        if stream.send_buffer:
            self.tunnel.schedule(stream)

    def _grant_stream_sendmes(self, stream: Stream) -> None:
        while (
            stream.state is StreamState.OPEN
            and stream.deliver_window <= STREAM_WINDOW_START - STREAM_WINDOW_INCREMENT
        ):
            stream.deliver_window += STREAM_WINDOW_INCREMENT
            self.tunnel.send_relay(RelayCommand.SENDME, stream.stream_id, b"")

    # -- XON/XOFF (prop 324 §4; C tor congestion_control_flow.c) -----------------------

    def _hold(self, stream: Stream, flow: StreamFlow, data: bytes) -> None:
        """Keep data for a paused reader; XOFF once too much piles up (as C tor's outbuf)."""
        if not flow.held_bytes:
            flow.held_since = self.tunnel.clock()
        flow.hold(data)
        self.tunnel.queue_budget.add(len(data))
        params: CCParams | None = self.tunnel.cc_params
        if flow.xoff_sent:
            flow.after_xoff += len(data)
            if params is not None and flow.after_xoff > params.overrun_bytes:
                raise RemoteProtocolError(
                    f"exit sent {flow.after_xoff} bytes on a stream after our XOFF"
                )
            return
        if params is None or not self.tunnel.is_usable:
            return
        if (
            flow.should_send_xoff(params.xoff_client, self.tunnel.now_usec())
            # Never let the grace period (a clock that does not move) hold unbounded data.
            or flow.held_bytes > params.max_held_bytes
        ):
            flow.xoff_sent = True
            flow.after_xoff = 0
            flow.xoffs_sent += 1
            self.tunnel.send_relay(RelayCommand.XOFF, stream.stream_id, encode_xoff())

    def _take_held(self, stream: Stream, flow: StreamFlow) -> bytes:
        data = flow.take_held()
        self.tunnel.queue_budget.remove(len(data))
        self.ended_holding.pop(stream, None)
        return data

    def discard_received(self, stream: Stream) -> None:
        """The application is gone (its transport closed): drop what it will never read."""
        if stream.flow is not None:
            self._take_held(stream, stream.flow)
            stream.flow.end = None

    def resume(self, stream: Stream) -> None:
        """The reader resumed: hand it what we held; XON (or SENDMEs) once it took it."""
        flow = stream.flow
        if flow is None:
            self._grant_stream_sendmes(stream)
            return
        end = flow.end
        if flow.held_bytes:
            # Also after the stream ended (exit's END deferred, or our own close): it
            # arrived before the END.
            self.tunnel.emit(StreamData(stream, self._take_held(stream, flow)))
        if end is not None:
            flow.end = None
            self.tunnel.emit(StreamEnded(stream, end.reason, end, "stream ended by exit"))
            return
        if flow.xoff_sent and not flow.held_bytes:
            # C tor sends XON once the edge connection's outbuf has drained.  Ours is
            # the events just queued: XON when the channel next flushes (`send_due_xons`),
            # after the application took the data - if it still reads by then.
            self._xon_due[stream] = None
            self.tunnel.settle_later()

    def send_due_xons(self) -> None:
        due = list(self._xon_due)
        self._xon_due.clear()
        for stream in due:
            flow = stream.flow
            if (
                flow is not None
                and flow.xoff_sent
                and not flow.held_bytes
                and not stream.delivery_paused
                and stream.state is StreamState.OPEN
                and self.tunnel.is_usable
            ):
                # kbps_ewma 0: no rate advice.
                flow.xoff_sent = False
                flow.after_xoff = 0
                flow.xons_sent += 1
                self.tunnel.send_relay(RelayCommand.XON, stream.stream_id, encode_xon(0))

    def _xon_xoff(self, stream: Stream, command: int, data: bytes) -> None:
        """XOFF/XON from the exit: stop/resume packaging this stream."""
        flow = stream.flow
        if flow is None:
            return  # C tor ignores them on a circuit without congestion control
        if command == RelayCommand.XOFF:
            if flow.xoff_received:
                return  # C tor: "Got multiple XOFF on connection" - ignored
            flow.xoffs_received += 1
            flow.xoff_received = True
            stream.package_window = 0  # packaging skips the stream until XON
            return
        rate = decode_xon(data)
        if rate is None:
            return  # malformed XON: C tor drops it
        flow.xons_received += 1
        flow.rate_kbps = rate
        if flow.xoff_received:
            flow.xoff_received = False
            stream.package_window = UNLIMITED_WINDOW
            if stream.send_buffer and stream.state is StreamState.OPEN:
                self.tunnel.schedule(stream)

    # -- the application side ----------------------------------------------------------

    def write(self, stream: Stream, data: bytes) -> bool:
        if stream.state is StreamState.CLOSED or stream.close_after_flush:
            return False
        stream.send_buffer += data
        if stream.state is StreamState.OPEN and not stream.accepting:
            self.tunnel.schedule(stream)
        full = len(stream.send_buffer) >= SEND_BUFFER_HIGH_WATER
        if full:
            stream.blocked_writer = True
        return full

    def close(self, stream: Stream) -> None:
        """END (DONE) once the data written so far is out; data written before
        CONNECTED (optimistic data) too: CONNECTED flushes it, then ends."""
        if stream.state is StreamState.CLOSED:
            return
        stream.close_after_flush = True
        if not stream.send_buffer or stream.state is StreamState.RESOLVING:
            self.end(stream, EndReason.DONE)

    def abort(self, stream: Stream, reason: int) -> None:
        if stream.flow is not None:
            self._take_held(stream, stream.flow)  # held for a paused reader; a deferred END
            stream.flow.end = None
        if stream.state is not StreamState.CLOSED:
            stream.send_buffer.clear()
            self.end(stream, reason)

    def packaged(self, stream: Stream) -> None:
        """Packaging took data from the stream's buffer: wake a blocked writer."""
        if stream.blocked_writer and len(stream.send_buffer) < SEND_BUFFER_HIGH_WATER // 2:
            stream.blocked_writer = False
            self.tunnel.emit(StreamWritable(stream))

    # -- closing -----------------------------------------------------------------------

    def forget(self, stream: Stream) -> None:
        stream.state = StreamState.CLOSED
        stream.deadline = None
        stream.send_buffer.clear()
        self.streams.pop(stream.stream_id, None)
        if self._cached is stream:
            self._cached = None
        with contextlib.suppress(ValueError):
            self.ready.remove(stream)
        if stream.flow is not None and stream.flow.held_bytes:
            self.ended_holding[stream] = None

    def end(self, stream: Stream, reason: int) -> None:
        """Our END: the stream is gone for us (data held for a paused reader stays: it
        arrived before our END; `abort` drops it)."""
        if stream.state is StreamState.CLOSED:
            return
        resolving = stream.state is StreamState.RESOLVING
        self.forget(stream)
        if self.tunnel.is_usable and not resolving:
            self.tunnel.send_relay(RelayCommand.END, stream.stream_id, encode_end(reason))

    def expire(self, now: float) -> float | None:
        """Streams whose exit did not answer by their deadline end with TIMEOUT (C tor
        then tries another circuit); returns the next deadline, if any."""
        soonest: float | None = None
        for stream in list(self.streams.values()):
            deadline = stream.deadline
            if deadline is None:
                continue
            if now >= deadline:
                self.end(stream, EndReason.TIMEOUT)
                self.tunnel.emit(
                    StreamEnded(stream, EndReason.TIMEOUT, None, "no answer from the exit in time")
                )
            elif soonest is None or deadline < soonest:
                soonest = deadline
        return soonest

    def close_all(self, message: str, *, drop_held: bool = False) -> None:
        """The tunnel is gone: every stream ends with DESTROY (after this run's data).
        ``drop_held`` (closed for MaxMemInQueues): ended streams lose what they still
        held for their readers too, and end with DESTROY instead of their exit's END."""
        if self._pending:
            with contextlib.suppress(RemoteProtocolError):
                self.flush()
        streams = list(self.streams.values())
        self.streams.clear()
        self.ready.clear()
        self._cached = None
        for stream in streams:
            stream.state = StreamState.CLOSED
            stream.deadline = None
            stream.send_buffer.clear()  # the application may keep the Stream around
            if stream.flow is not None:
                self._take_held(stream, stream.flow)  # it failed: no data after its end
        if drop_held:
            for stream in list(self.ended_holding):
                self.discard_received(stream)
                streams.append(stream)
        for stream in streams:
            self.tunnel.emit(StreamEnded(stream, EndReason.DESTROY, None, message))
