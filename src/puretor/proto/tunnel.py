"""A tunnel: one or more circuits to the same last hop, carrying one set of streams.

An ordinary circuit is a tunnel with one circuit.  A conflux set (proposal 329) is a
tunnel whose circuits ("legs") are linked at the exit: multiplexed messages (BEGIN,
DATA, END, CONNECTED, RESOLVE(D), XON/XOFF) are sequenced across them and may go on
any of them.  The tunnel owns the `StreamMap`, decides which circuit each cell goes on
(the conflux scheduler, `ConfluxSet.choose_send_leg`), packages stream data into DATA
cells as soon as the windows allow, keeps the deadlines (a circuit that
takes too long to build, an exit that does not answer BEGIN) and queues the events.

Sans-I/O: times come in (`now` on the entry points, `handle_timer`) and events go out
through the `EventQueue`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from puretor.errors import RemoteProtocolError
from puretor.proto.cells import DestroyReason
from puretor.proto.circuit import Circuit, CircuitState
from puretor.proto.conflux import MULTIPLEXED, NEEDS_STREAM, ConfluxSet, LegState, encode_switch
from puretor.proto.events import (
    ConfluxLinked,
    ControlCell,
    Event,
    EventQueue,
    HopAdded,
    TunnelClosed,
)
from puretor.proto.memory import QueueBudget
from puretor.proto.relaymsg import (
    RELAY_DATA_LEN,
    EndReason,
    RelayCommand,
    encode_begin,
    encode_end,
    encode_resolve,
)
from puretor.proto.streams import Stream, StreamMap, StreamState

if TYPE_CHECKING:
    from puretor.proto.congestion import CCParams, Vegas

_CMD_DATA = RelayCommand.DATA.value
_CMD_SWITCH = RelayCommand.CONFLUX_SWITCH.value
# Cells one stream may package before the next stream with data gets a turn.
FAIR_SHARE_CELLS = 32


class Tunnel:
    """Circuits (1, or the legs of a conflux set) and the streams they carry."""

    def __init__(
        self,
        events: EventQueue,
        *,
        clock: Callable[[], float] = time.monotonic,
        queue_budget: QueueBudget | None = None,
    ) -> None:
        self.events = events
        self.clock = clock  # only for RTTs between explicit `now`s (congestion control)
        # Counts what the streams and the conflux set hold queued (MaxMemInQueues).
        self.queue_budget = queue_budget if queue_budget is not None else QueueBudget()
        self.circuits: list[Circuit] = []
        self.streams = StreamMap(self)
        self.conflux: ConfluxSet | None = None  # once linked: a conflux set of circuits
        self.cc_params: CCParams | None = None  # negotiated with the last hop, if at all
        self.closed_reason: TunnelClosed | None = None
        self.owner: Any = None  # whatever the asyncio layer attaches (events name us)
        self.build_deadline: float | None = None
        # Streams the far end may open (BEGIN; an onion service's rendezvous circuit):
        # None: none; 0: any number; n: at most n at once (HiddenServiceMaxStreams),
        # and then close the whole tunnel if `close_on_stream_limit`.
        self.accept_streams: int | None = None
        self.close_on_stream_limit = False
        self._packaging = False

    # -- what others read ---------------------------------------------------------------

    @property
    def circuit(self) -> Circuit:
        """The tunnel's first circuit (of a conflux set: the one linked fastest)."""
        return self.circuits[0]

    @property
    def state(self) -> CircuitState:
        return self.circuits[0].state if self.circuits else CircuitState.CLOSED

    @property
    def is_usable(self) -> bool:
        return self.closed_reason is None and any(c.is_usable for c in self.circuits)

    @property
    def hop_count(self) -> int:
        return self.circuits[0].hop_count

    @property
    def cc(self) -> Vegas | None:
        return self.circuits[0].cc

    @property
    def cells_received(self) -> int:
        return sum(c.cells_received for c in self.circuits)

    @property
    def cells_sent(self) -> int:
        return sum(c.cells_sent for c in self.circuits)

    @property
    def circ_id(self) -> int:
        return self.circuits[0].circ_id

    @property
    def channel(self) -> Any:
        return self.circuits[0].channel

    def now_usec(self) -> int:
        return int(self.clock() * 1_000_000)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    # -- building (on the one circuit of a tunnel being built) ------------------------

    def send_create_fast(self) -> None:
        self.circuit.send_create_fast()

    def send_create2(self, rsa_id: bytes, ntor_key: bytes) -> None:
        self.circuit.send_create2(rsa_id, ntor_key)

    def send_extend2(self, *args: Any, **kwargs: Any) -> None:
        self.circuit.send_extend2(*args, **kwargs)

    def add_virtual_hop(self, *args: Any, **kwargs: Any) -> None:
        self.circuit.add_virtual_hop(*args, **kwargs)

    def mark_open(self) -> None:
        self.circuit.mark_open()
        self.build_deadline = None

    def reopen_for_extension(self) -> None:
        self.circuit.reopen_for_extension()

    def hop_added(self, circuit: Circuit, cc_params: CCParams | None) -> None:
        if cc_params is not None:
            self.cc_params = cc_params
        self.emit(HopAdded(self, circuit.hop_count))

    # -- streams ------------------------------------------------------------------------

    def open_stream(
        self,
        owner: Any,
        host: str,
        port: int,
        flags: int = 0,
        *,
        deadline: float | None = None,
    ) -> Stream:
        """RELAY_BEGIN to ``host:port`` at the last hop (an onion service: host "").
        ``deadline`` (on the tunnel's clock): end it with TIMEOUT if no answer by then."""
        stream = self._new_stream(owner, f"{host}:{port}", deadline)
        self.send_relay(RelayCommand.BEGIN, stream.stream_id, encode_begin(host, port, flags))
        return stream

    def open_dir_stream(self, owner: Any, *, deadline: float | None = None) -> Stream:
        if self.conflux is not None:
            raise RuntimeError("no directory streams on a conflux set")
        stream = self._new_stream(owner, "directory", deadline)
        self.send_relay(RelayCommand.BEGIN_DIR, stream.stream_id, b"")
        return stream

    def resolve(self, owner: Any, hostname: str, *, deadline: float | None = None) -> Stream:
        stream = self._new_stream(owner, hostname, deadline)
        stream.state = StreamState.RESOLVING
        self.send_relay(RelayCommand.RESOLVE, stream.stream_id, encode_resolve(hostname))
        return stream

    def streams_over_limit(self, stream_id: int) -> None:
        """A BEGIN past `accept_streams`: END (DONE, as C tor), or close the tunnel."""
        self.send_relay(RelayCommand.END, stream_id, encode_end(EndReason.DONE))
        if self.close_on_stream_limit:
            self.destroy(DestroyReason.FINISHED, "too many streams on a rendezvous circuit")

    def _new_stream(self, owner: Any, target: str, deadline: float | None) -> Stream:
        if not self.is_usable:
            raise RuntimeError("circuit is not open")
        stream = self.streams.new(owner, target, flow_controlled=self.cc is not None)
        stream.deadline = deadline
        return stream

    # -- sending ------------------------------------------------------------------------

    def send_relay(
        self,
        command: int,
        stream_id: int,
        data: bytes = b"",
        *,
        hop: int = -1,
        early: bool = False,
    ) -> bytes:
        """Seal one relay message and queue it on the right circuit; returns that hop's
        running digest.  On a conflux set a multiplexed message for the exit goes on the
        leg the scheduler picks (after a SWITCH if that is another leg than last time)."""
        cfx = self.conflux
        if cfx is not None and command in MULTIPLEXED and hop == -1:
            leg = cfx.choose_send_leg(data=command == _CMD_DATA)
            if leg is None:
                raise RuntimeError("no conflux leg can take this message now")
            self._switch_to(cfx, leg)
            digest = leg.circuit.seal(command, stream_id, data)
            cfx.note_sent(leg, 1)
            return digest
        return self.circuit.seal(command, stream_id, data, hop=hop, early=early)

    def _switch_to(self, cfx: ConfluxSet, leg: Any) -> None:
        relative = cfx.switch_to(leg)
        if relative:
            leg.circuit.seal(_CMD_SWITCH, 0, encode_switch(relative))

    def schedule(self, stream: Stream) -> None:
        """``stream`` has data to send: package what the windows allow, now."""
        if stream not in self.streams.ready:
            self.streams.ready.append(stream)
        self._package()

    def window_opened(self, circuit: Circuit) -> None:
        """A SENDME opened ``circuit``'s window: package more at once (as C tor's
        circuit_resume_edge_reading), so congestion control sees the window refilled
        before the next SENDME of the same read is counted."""
        if self.streams.ready:
            self._package()

    def _package(self) -> None:
        """Turn buffered stream data into DATA cells while the windows allow: streams
        take turns of `FAIR_SHARE_CELLS`; on a conflux set the scheduler picks the leg
        for each turn.  The sealed cells wait in the circuits' `CircuitMux` queues."""
        if self._packaging:
            return  # an END or XON sealed while packaging comes back here
        self._packaging = True
        try:
            self._package_ready()
        finally:
            self._packaging = False

    def _package_ready(self) -> None:
        ready = self.streams.ready
        cfx = self.conflux
        while ready:
            leg = None
            if cfx is not None:
                leg = cfx.choose_send_leg(data=True)
                if leg is None:
                    return
                circuit = leg.circuit
            else:
                circuit = self.circuits[0]
                if not circuit.is_usable:
                    return
            window = circuit.last_hop.send_window
            if window <= 0:
                return
            stream = ready[0]
            buf = stream.send_buffer
            cells = (len(buf) + RELAY_DATA_LEN - 1) // RELAY_DATA_LEN
            n = min(cells, stream.package_window, window, FAIR_SHARE_CELLS)
            if n > 0:
                if leg is not None:
                    self._switch_to(cfx, leg)  # type: ignore[arg-type]
                n = circuit.seal_data(stream, n)
                if leg is not None:
                    cfx.note_sent(leg, n)  # type: ignore[union-attr]
            if not buf or stream.package_window <= 0:
                ready.popleft()
                if not buf and stream.close_after_flush:
                    self.streams.end(stream, 6)  # END reason DONE
            else:
                ready.rotate(-1)
            self.streams.packaged(stream)

    def settle_later(self) -> None:
        """Have `settle` run when a channel of ours next produces output."""
        for circuit in self.circuits:
            if circuit.is_usable:
                circuit.channel.settle_later(self)
                return

    def settle(self) -> None:
        """Just before the channel's output is taken (the application has handled the
        events queued so far): what waited for that - XONs."""
        self.streams.send_due_xons()

    # -- what the circuits hand us ------------------------------------------------------

    def data(self, circuit: Circuit, stream_id: int, pieces: list[Any], cells: int) -> None:
        """DATA from the last hop of ``circuit`` (already counted for its window)."""
        cfx = self.conflux
        if cfx is None:
            self.streams.data(stream_id, pieces, cells)
            return
        # Conflux: in sequence order across the legs (the views die with the run).
        self._sequenced(circuit, _CMD_DATA, stream_id, b"".join(pieces), cells)

    def stream_message(self, circuit: Circuit, command: int, stream_id: int, data: bytes) -> None:
        """A message for a stream (CONNECTED, END, RESOLVED, SENDME, XON, XOFF)."""
        cfx = self.conflux
        if cfx is None or command not in MULTIPLEXED:
            self.streams.message(stream_id, command, data)
            return
        if not stream_id and command in NEEDS_STREAM:
            return  # C tor drops these before sequencing
        self._sequenced(circuit, command, stream_id, data, 1)

    def _sequenced(
        self, circuit: Circuit, command: int, stream_id: int, data: bytes, cells: int
    ) -> None:
        cfx = self.conflux
        leg = circuit.conflux_leg
        assert cfx is not None and leg is not None
        if cfx.arrive(leg, cells):
            self._deliver(command, stream_id, data, cells)
            while self.is_usable:
                held = cfx.next_in_order()
                if held is None:
                    break
                self._deliver(held.command, held.stream_id, held.data, held.cells)
        else:
            cfx.hold(leg, cells, command, stream_id, data, self.clock())

    def _deliver(self, command: int, stream_id: int, data: bytes, cells: int) -> None:
        if command == _CMD_DATA:
            self.streams.data(stream_id, [data], cells)
        else:
            self.streams.message(stream_id, command, data)

    def end_of_run(self) -> None:
        """A circuit finished a run of cells: stream data goes out as events now."""
        self.streams.flush()

    def conflux_message(self, circuit: Circuit, command: int, data: bytes) -> None:
        """LINKED and SWITCH, from the exit of a conflux leg only (prop 329 §4.2.1)."""
        cfx, leg = circuit.conflux, circuit.conflux_leg
        if cfx is None or leg is None:
            raise RemoteProtocolError(f"conflux message {command} on a circuit without conflux")
        if command == RelayCommand.CONFLUX_LINKED:
            cfx.linked(leg, data, self.now_usec())
            circuit.seal(RelayCommand.CONFLUX_LINKED_ACK, 0, b"")
            self.emit(ConfluxLinked(self, self.circuits.index(circuit), leg.link_rtt_usec))
        elif command == RelayCommand.CONFLUX_SWITCH:
            cfx.switch_received(leg, data)
        else:
            raise RemoteProtocolError(f"conflux message {command} is not for a client")

    def control_cell(self, circuit: Circuit, command: int, data: bytes, hop: int) -> None:
        self.emit(ControlCell(self, command, data, hop))

    # -- conflux ------------------------------------------------------------------------

    def start_conflux(self, cfx: ConfluxSet) -> None:
        """Make this (built, congestion-controlled) circuit a leg of ``cfx`` and send LINK."""
        circuit = self.circuit
        cfx.queue_budget = self.queue_budget
        leg = cfx.add_leg(circuit)
        circuit.seal(RelayCommand.CONFLUX_LINK, 0, cfx.link_message(leg, self.now_usec()))

    @staticmethod
    def join(cfx: ConfluxSet, tunnels: list[Tunnel]) -> Tunnel:
        """Every leg linked: one tunnel of them all, its first circuit the one that linked
        fastest (it gives the handle streams are opened on).  The other tunnels are
        empty afterwards, but for a leg that never linked: it stays in its own tunnel
        (out of the set), for the caller to close."""
        owner = cfx.finalize()
        home = next(t for t in tunnels if t.circuit is owner)
        for tunnel in tunnels:
            if tunnel is home:
                continue
            for circuit in list(tunnel.circuits):
                if circuit.conflux_leg is None or circuit.conflux_leg.state is not LegState.LINKED:
                    continue
                home.circuits.append(circuit)
                circuit.tunnel = home
            tunnel.circuits = [c for c in tunnel.circuits if c.tunnel is tunnel]
        home.conflux = cfx
        return home

    # -- deadlines ----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.build_deadline, self._stream_deadline()) if d is not None]
        return min(deadlines) if deadlines else None

    def _stream_deadline(self) -> float | None:
        found = [s.deadline for s in self.streams.streams.values() if s.deadline is not None]
        return min(found) if found else None

    def handle_timer(self, now: float) -> None:
        if self.build_deadline is not None and now >= self.build_deadline:
            self.build_deadline = None
            if self.state is CircuitState.BUILDING:
                self.destroy(DestroyReason.TIMEOUT, "build timed out")
                return
        self.streams.expire(now)

    # -- teardown -----------------------------------------------------------------------

    def destroy(self, reason: int = 0, message: str = "closed locally") -> None:
        """Close every circuit of the tunnel: DESTROY to each first hop."""
        for circuit in list(self.circuits):
            circuit.destroy(reason, message)

    def circuit_closed(self, circuit: Circuit, reason: int, message: str, remote: bool) -> None:
        """One of our circuits is gone.  Like C tor, a linked set does not survive the
        loss of a leg: the tunnel closes, and with it every stream (and its other legs).
        A leg lost while a set is being linked only closes its own tunnel: the linking
        fails."""
        cfx = circuit.conflux
        if self.closed_reason is not None:
            if cfx is not None:
                cfx.leg_closed(circuit, message)
            return
        event = TunnelClosed(self, reason, message, remote)
        self.closed_reason = event
        self.build_deadline = None
        text = f"circuit closed: {message} ({DestroyReason.describe(reason)})"
        try:
            self.streams.close_all(text, drop_held=reason == DestroyReason.RESOURCELIMIT)
        finally:
            self.emit(event)
            if cfx is not None:
                cfx.leg_closed(circuit, message)  # destroys the other legs of a linked set
            for other in self.circuits:
                if other is not circuit and other.state is not CircuitState.CLOSED:
                    other.destroy(0, f"another circuit of the tunnel closed: {message}")
