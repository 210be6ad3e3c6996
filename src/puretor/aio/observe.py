"""What a client reports about itself: circuit, stream, channel, bandwidth and bootstrap
events as typed objects, and the latest state of each circuit and stream.

The shell reports state changes here (a circuit launched, extended, built or closed; a
stream attached or ended; a channel opened) - never per cell.  Bandwidth is a sample of
two byte counters, once a second, only while someone listens for it.  `TorClient.events`
and the control port both read these; the control port is only a text view of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger("puretor")


@dataclass(frozen=True, slots=True)
class RelayRef:
    """A relay in a path: ``fingerprint`` (40 upper-case hex digits) and ``nickname``."""

    fingerprint: str
    nickname: str = ""

    def __str__(self) -> str:  # control-spec LongName
        return f"${self.fingerprint}~{self.nickname}" if self.nickname else f"${self.fingerprint}"


@dataclass(frozen=True, slots=True)
class CircuitEvent:
    """A circuit changed state: LAUNCHED, EXTENDED, BUILT, FAILED or CLOSED (as C tor's
    CIRC event).  ``id`` is the client-wide circuit number; ``path`` the hops so far."""

    id: int
    status: str
    path: tuple[RelayRef, ...] = ()
    purpose: str = "GENERAL"
    build_flags: tuple[str, ...] = ()
    time_created: float = 0.0  # time.time()
    reason: str | None = None  # FAILED/CLOSED: why (C tor's reason names)
    remote_reason: str | None = None
    old_purpose: str | None = None  # PURPOSE_CHANGED (CIRC_MINOR): the purpose before


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A stream changed state: NEW, SENTCONNECT, SENTRESOLVE, SUCCEEDED, FAILED, CLOSED or
    DETACHED (as C tor's STREAM event).  ``circuit_id`` is 0 while unattached."""

    id: int
    status: str
    circuit_id: int
    target: str  # host:port
    reason: str | None = None
    remote_reason: str | None = None
    source_address: str | None = None  # the SOCKS client's address:port, if known
    purpose: str = "USER"


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """A connection to a relay: LAUNCHED, CONNECTED, FAILED or CLOSED (ORCONN)."""

    id: int
    status: str
    relay: RelayRef
    address: str  # address:port
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BandwidthEvent:
    """Bytes read and written on relay connections in the last second (BW)."""

    read: int
    written: int


@dataclass(frozen=True, slots=True)
class StreamBandwidthEvent:
    """Application bytes a stream read and wrote in the last second (STREAM_BW); only
    for streams that moved data."""

    id: int
    read: int
    written: int


@dataclass(frozen=True, slots=True)
class BootstrapEvent:
    """A bootstrap step: ``percent``, ``tag``, ``summary`` (STATUS_CLIENT BOOTSTRAP)."""

    percent: int
    tag: str
    summary: str


@dataclass(frozen=True, slots=True)
class CircuitBandwidthEvent:
    """Cells a circuit moved in the last second, as bytes (CIRC_BW: 514 per cell, as C
    tor counts them); only for circuits that moved any."""

    id: int
    read: int
    written: int


@dataclass(frozen=True, slots=True)
class GuardEvent:
    """An entry guard's state changed (GUARD): NEW (sampled), UP, DOWN or DROPPED."""

    relay: RelayRef
    status: str


@dataclass(frozen=True, slots=True)
class NetworkLivenessEvent:
    """The network looks reachable (``up``) or not any more (NETWORK_LIVENESS): up at
    the first circuit built and after a failure, down when no relay can be reached."""

    up: bool


@dataclass(frozen=True, slots=True)
class BuildTimeoutEvent:
    """The learned circuit build timeout changed (BUILDTIMEOUT_SET COMPUTED): times in
    seconds, ``alpha`` and ``quantile`` of the Pareto fit (path-spec §2.4)."""

    total_times: int
    timeout: float
    xm: float
    alpha: float
    quantile: float
    timeout_rate: float


@dataclass(frozen=True, slots=True)
class GeneralStatusEvent:
    """Something about the client as a whole (STATUS_GENERAL), e.g. ``CLOCK_SKEW`` with
    ``SKEW`` and ``SOURCE``: ``severity`` NOTICE, WARN or ERR."""

    severity: str
    action: str
    arguments: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NewConsensusEvent:
    """A new consensus is in use (NEWCONSENSUS); ``valid_after`` as time.time()."""

    valid_after: float


@dataclass(frozen=True, slots=True)
class OnionDescriptorEvent:
    """An onion service descriptor fetch or upload (C tor's HS_DESC and HS_DESC_CONTENT
    events).  A fetch: REQUESTED from an HSDir, then RECEIVED or FAILED (``reason``:
    NOT_FOUND, QUERY_REJECTED, BAD_DESC, UNEXPECTED).  An upload (``upload``, one of our
    services): UPLOAD, then UPLOADED or FAILED.

    ``address`` is the service's address without ``.onion``; ``descriptor_id`` its
    blinded key for the time period, base64 without padding; ``hsdir_index`` (REQUESTED)
    the HSDir's fetch position on the hash ring, hex.  ``content`` is the descriptor as
    the HSDir sent it (RECEIVED), "" for FAILED and None for REQUESTED."""

    action: str
    address: str
    hsdir: RelayRef
    descriptor_id: str
    reason: str | None = None
    hsdir_index: str | None = None
    content: str | None = None
    upload: bool = False


ClientEvent = (
    CircuitEvent
    | StreamEvent
    | ChannelEvent
    | BandwidthEvent
    | StreamBandwidthEvent
    | CircuitBandwidthEvent
    | BootstrapEvent
    | GuardEvent
    | NetworkLivenessEvent
    | BuildTimeoutEvent
    | NewConsensusEvent
    | GeneralStatusEvent
    | OnionDescriptorEvent
)
Listener = Callable[[Any], None]

_circuit_ids = itertools.count(1)
_stream_ids = itertools.count(1)
_channel_ids = itertools.count(1)


def new_circuit_id() -> int:
    return next(_circuit_ids)


def new_stream_id() -> int:
    return next(_stream_ids)


def new_channel_id() -> int:
    return next(_channel_ids)


@dataclass
class Observer:
    """Collects the shell's reports, keeps the live circuits and streams, and passes each
    event to the listeners that asked for its type."""

    circuits: dict[int, CircuitEvent] = field(default_factory=dict)
    streams: dict[int, StreamEvent] = field(default_factory=dict)
    channels: dict[int, ChannelEvent] = field(default_factory=dict)
    bytes_read: int = 0  # relay connections, since start (GETINFO traffic/read)
    bytes_written: int = 0
    _listeners: list[tuple[Listener, tuple[type, ...]]] = field(default_factory=list)
    _bw_task: asyncio.Task[None] | None = None
    # The open streams' and circuits' counters, sampled with BW: () -> [events].
    stream_sampler: Callable[[], list[StreamBandwidthEvent]] | None = None
    circuit_sampler: Callable[[], list[CircuitBandwidthEvent]] | None = None
    network_live: bool | None = None  # None: nothing known yet

    # -- reports from the shell --------------------------------------------------------

    def emit(self, event: ClientEvent) -> None:
        if isinstance(event, CircuitEvent):
            if event.status == "PURPOSE_CHANGED":  # a minor event: the state stays
                last = self.circuits.get(event.id)
                if last is not None:
                    self.circuits[event.id] = replace(last, purpose=event.purpose)
            elif event.status in ("FAILED", "CLOSED"):
                self.circuits.pop(event.id, None)
            else:
                self.circuits[event.id] = event
        elif isinstance(event, StreamEvent):
            if event.status in ("FAILED", "CLOSED"):
                self.streams.pop(event.id, None)
            else:
                self.streams[event.id] = event
        elif isinstance(event, ChannelEvent):
            if event.status in ("FAILED", "CLOSED"):
                self.channels.pop(event.id, None)
            else:
                self.channels[event.id] = event
        for listener, kinds in list(self._listeners):
            if not kinds or isinstance(event, kinds):
                try:
                    listener(event)
                except Exception:  # a broken listener must not break the client
                    log.exception("event listener failed on %s", type(event).__name__)

    def circuit(self, circuit_id: int, status: str, **changes: Any) -> None:
        """Report a circuit's new ``status``; unchanged fields keep their last values."""
        last = self.circuits.get(circuit_id)
        if last is None:
            event = CircuitEvent(circuit_id, status, **changes)
        else:
            event = replace(last, status=status, **changes)
        self.emit(event)

    def stream(self, stream_id: int, status: str, **changes: Any) -> None:
        last = self.streams.get(stream_id)
        if last is None:
            if status != "NEW":
                return  # already closed
            event = StreamEvent(stream_id, status, **changes)
        else:
            event = replace(last, status=status, **changes)
        self.emit(event)

    def liveness(self, up: bool) -> None:
        """Report whether relays answer; only a change is an event."""
        if self.network_live is not up:
            self.network_live = up
            self.emit(NetworkLivenessEvent(up))

    # -- listeners -------------------------------------------------------------------

    def add_listener(self, listener: Listener, kinds: tuple[type, ...] = ()) -> None:
        self._listeners.append((listener, kinds))
        sampled = not kinds or bool(
            {BandwidthEvent, StreamBandwidthEvent, CircuitBandwidthEvent} & set(kinds)
        )
        if sampled and self._bw_task is None:
            with contextlib.suppress(RuntimeError):  # no loop: started by the next call
                self._bw_task = asyncio.get_running_loop().create_task(self._sample_bandwidth())

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = [(fn, kinds) for fn, kinds in self._listeners if fn != listener]
        sampled = any(
            self._wants(kind)
            for kind in (BandwidthEvent, StreamBandwidthEvent, CircuitBandwidthEvent)
        )
        if self._bw_task is not None and not sampled:
            self._bw_task.cancel()
            self._bw_task = None

    def _wants(self, kind: type) -> bool:
        return any(not kinds or kind in kinds for _, kinds in self._listeners)

    async def _sample_bandwidth(self) -> None:
        """Once a second, the bytes moved since the last sample (C tor's BW cadence)."""
        last_read, last_written = self.bytes_read, self.bytes_written
        next_at = time.monotonic() + 1.0
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1.0
            read, written = self.bytes_read, self.bytes_written
            self.emit(BandwidthEvent(read - last_read, written - last_written))
            last_read, last_written = read, written
            if self.stream_sampler is not None and self._wants(StreamBandwidthEvent):
                for event in self.stream_sampler():
                    self.emit(event)
            if self.circuit_sampler is not None and self._wants(CircuitBandwidthEvent):
                for circuit_event in self.circuit_sampler():
                    self.emit(circuit_event)

    def close(self) -> None:
        if self._bw_task is not None:
            self._bw_task.cancel()
            self._bw_task = None
