"""What the core reports: events queued during a call, drained by the caller after it.

The core never calls application code.  A channel's `receive_data`, a timer, or an API
call (a stream write, a close) may queue events; the owner (the asyncio layer, or a
test) drains the `EventQueue` after the call returns and acts on each.  Stream data
comes as one `StreamData` per stream per run of cells, never per cell.

One queue is shared by every channel of a client (a conflux tunnel's legs may sit on
several channels, and its events must not wait for the other channel's next read).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from puretor.proto.channel import Channel
    from puretor.proto.relaymsg import Connected, End, ResolvedAnswer
    from puretor.proto.streams import Stream
    from puretor.proto.tunnel import Tunnel


# -- channels -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """The link handshake is done: circuits may be made on the channel."""

    channel: Channel


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is gone (every circuit on it too: their tunnels say so)."""

    channel: Channel
    reason: str


# -- tunnels (and their circuits) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HopAdded:
    """CREATED(_FAST)/EXTENDED2 completed: the tunnel's circuit now has ``hops`` hops."""

    tunnel: Tunnel
    hops: int


@dataclass(frozen=True, slots=True)
class TunnelClosed:
    """The tunnel is gone (a circuit of it was destroyed, truncated or timed out)."""

    tunnel: Tunnel
    reason: int  # DESTROY/TRUNCATED reason (tor-spec §5.4)
    message: str
    remote: bool  # the relay closed it (DESTROY/TRUNCATED), not us


@dataclass(frozen=True, slots=True)
class ControlCell:
    """A circuit-level relay message the core does not handle itself (onion services)."""

    tunnel: Tunnel
    command: int
    body: bytes
    hop: int


@dataclass(frozen=True, slots=True)
class ConfluxLinked:
    """CONFLUX_LINKED arrived on a leg (and LINKED_ACK went back)."""

    tunnel: Tunnel
    leg_index: int
    rtt_usec: int


# -- streams --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamConnected:
    stream: Stream
    connected: Connected


@dataclass(frozen=True, slots=True)
class StreamData:
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamResolved:
    stream: Stream
    answers: list[ResolvedAnswer]


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The stream is gone: END from the exit, the tunnel closed, a timeout, or our abort."""

    stream: Stream
    reason: int  # RELAY_END reason (tor-spec §6.3)
    end: End | None  # the exit's END message, if it sent one
    message: str


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """The stream's send buffer drained below the low-water mark: write again."""

    stream: Stream


ChannelEvent = ChannelOpened | ChannelClosed


@dataclass(frozen=True, slots=True)
class StreamIncoming:
    """The far end opened a stream (BEGIN) on a tunnel that accepts them (an onion
    service's rendezvous circuit).  The owner answers with ``stream.accept()`` or
    ``stream.abort(reason)``; until then the stream is open for DATA but sends none."""

    tunnel: Tunnel
    stream: Stream
    host: str
    port: int


TunnelEvent = HopAdded | TunnelClosed | ControlCell | ConfluxLinked | StreamIncoming
StreamEvent = StreamConnected | StreamData | StreamResolved | StreamEnded | StreamWritable
Event = ChannelEvent | TunnelEvent | StreamEvent


class EventQueue:
    """Events in the order the core produced them."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: deque[Any] = deque()

    def append(self, event: Event) -> None:
        self._events.append(event)

    def __bool__(self) -> bool:
        return bool(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def drain(self) -> list[Event]:
        """Every queued event, oldest first; the queue is empty afterwards."""
        events = list(self._events)
        self._events.clear()
        return events
