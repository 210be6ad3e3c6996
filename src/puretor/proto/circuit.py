"""A client circuit, sans-I/O: handshakes, relay crypto, streams, flow control.

tor-spec §5 (create/extend), §6 (relay cells), §7.3–7.4 (SENDME windows),
proposal 289 (authenticated SENDMEs) and proposal 324 (congestion control with the
exit: SENDMEs every ``sendme_inc`` cells, Vegas for what we send, XON/XOFF instead
of stream SENDMEs).  Cells leave through the owning `Channel`'s output buffer;
nothing here touches a socket, and the clock (`Circuit.clock`, used only by
congestion control) can be replaced.
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from puretor.errors import RemoteProtocolError
from puretor.proto import handshake
from puretor.proto.cells import (
    CellCommand,
    DestroyReason,
    decode_created2,
    decode_created_fast,
    decode_destroy,
    encode_create2,
    encode_create_fast,
    encode_destroy,
)
from puretor.proto.conflux import MULTIPLEXED, NEEDS_STREAM, LegState, encode_switch
from puretor.proto.congestion import (
    UNLIMITED_WINDOW,
    CCParams,
    StreamFlow,
    Vegas,
    cc_request_message,
    decode_xon,
    encode_xoff,
    encode_xon,
    parse_cc_response,
)
from puretor.proto.relaycrypto import HopCrypto, OnionCrypto
from puretor.proto.relaymsg import (
    RELAY_BODY_LEN,
    RELAY_DATA_LEN,
    EndReason,
    LinkSpecifier,
    RelayCommand,
    decode_connected,
    decode_end,
    decode_extended2,
    decode_resolved,
    decode_sendme,
    decode_truncated,
    encode_begin,
    encode_end,
    encode_extend2,
    encode_resolve,
    encode_sendme_v1,
)
from puretor.proto.stream import (
    SEND_BUFFER_HIGH_WATER,
    STREAM_WINDOW_INCREMENT,
    STREAM_WINDOW_START,
    Stream,
    StreamSink,
    StreamState,
)

if TYPE_CHECKING:
    from puretor.proto.channel import Channel
    from puretor.proto.conflux import ConfluxLeg, ConfluxSet

CIRCWINDOW_START = 1000
CIRCWINDOW_INCREMENT = 100
MAX_RELAY_EARLY = 8
# Cells one stream may package before the next stream with data gets a turn.
_FAIR_SHARE_CELLS = 32
# Most full DATA cells for one stream delivered as one joined piece.
_MAX_STRETCH = 256

_RELAY_HEADER = struct.Struct(">BHHIH")  # command, recognized, stream id, digest, length
_RELAY_HEADER_SHORT = struct.Struct(">B2xH4xH")  # command, stream id, length
_CMD_DATA = RelayCommand.DATA.value
_CMD_SENDME = RelayCommand.SENDME.value
_CMD_SWITCH = RelayCommand.CONFLUX_SWITCH.value
_CELL_RELAY = CellCommand.RELAY.value
_CELL_RELAY_EARLY = CellCommand.RELAY_EARLY.value

_STREAM_COMMANDS = frozenset(
    {
        RelayCommand.CONNECTED,
        RelayCommand.END,
        RelayCommand.RESOLVED,
        RelayCommand.SENDME,
        RelayCommand.XON,
        RelayCommand.XOFF,
    }
)


class CircuitState(enum.Enum):
    BUILDING = "building"
    OPEN = "open"
    CLOSED = "closed"


# -- events (low-rate; DATA never becomes an event) -------------------------


@dataclass(frozen=True, slots=True)
class HopAdded:
    """CREATED(_FAST)/EXTENDED2 completed: the circuit now has ``hops`` hops."""

    hops: int


@dataclass(frozen=True, slots=True)
class CircuitClosed:
    reason: int  # DESTROY/TRUNCATED reason (tor-spec §5.4)
    message: str
    remote: bool  # the relay closed it (DESTROY/TRUNCATED), not us


@dataclass(frozen=True, slots=True)
class ControlCell:
    """A circuit-level relay message the core does not handle (onion services)."""

    command: int
    body: bytes
    hop: int


@dataclass(frozen=True, slots=True)
class ConfluxLinked:
    """CONFLUX_LINKED arrived (and LINKED_ACK went back): this leg is linked."""

    rtt_usec: int


CircuitEvent = HopAdded | CircuitClosed | ControlCell | ConfluxLinked


class _PaddingPool:
    """Random bytes for relay-cell padding without a syscall per cell."""

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._pool):
            self._pool = os.urandom(65536)
            self._pos = 0
        out = self._pool[self._pos : self._pos + n]
        self._pos += n
        return out


_padding = _PaddingPool()


def _full_data_stretch(
    block: bytearray, o: int, m: int, hop_of: list[int], i: int, last: int
) -> int:
    """How many cells from offset ``o`` (at most ``m``) are full DATA cells for the same
    stream as the first (which the caller checked) and from hop ``last``; 1 if only it.

    The shortest run of equal leading bytes of each header field decides (command,
    stream ID, length: strided slices, `lstrip` in C).
    """
    body_len = RELAY_BODY_LEN
    if block[o + body_len + 3 : o + body_len + 5] != block[o + 3 : o + 5]:
        return 1
    hi = o + m * body_len
    for field in (0, 3, 4, 9, 10):
        column = block[o + field : hi : body_len]
        m = min(m, len(column) - len(column.lstrip(column[:1])))
        hi = o + m * body_len
    if m > 1 and hop_of[i : i + m].count(last) == m:
        return m
    return 1


def _join_data(mv: memoryview, o: int, m: int) -> bytes:
    """The data of ``m`` full DATA cells from offset ``o``, joined."""
    return b"".join(
        [mv[p : p + RELAY_DATA_LEN] for p in range(o + 11, o + m * RELAY_BODY_LEN, RELAY_BODY_LEN)]
    )


class Circuit:
    """One origin circuit on a channel."""

    def __init__(
        self,
        channel: Channel,
        circ_id: int,
        *,
        sendme_accept_min_version: int = 0,
        circwindow: int = CIRCWINDOW_START,
    ) -> None:
        self.channel = channel
        self.circ_id = circ_id
        self.state = CircuitState.BUILDING
        self.crypto = OnionCrypto()
        self.on_event: Callable[[CircuitEvent], None] = lambda ev: None
        self.streams: dict[int, Stream] = {}
        self.closed_reason: CircuitClosed | None = None
        self._pending: tuple[str, Any] | None = None
        self._relay_early_sent = 0
        self._next_stream_id = 1
        self._sendme_accept_min = sendme_accept_min_version
        self._circwindow = circwindow
        # Per-hop circuit windows and the digests of cells that should be SENDMEd.
        # On the congestion-controlled hop `_package_window` only counts cells modulo
        # `sendme_inc` (which cell's digest to record); `cc` governs how many may go.
        self._package_window: list[int] = []
        self._deliver_window: list[int] = []
        self._sendme_inc: list[int] = []  # cells per SENDME, each direction
        self._sendme_at: list[int] = []  # deliver window at which we send a SENDME
        self._expected_sendme: list[deque[bytes]] = []
        # Congestion control, negotiated with the last hop (the exit) by ntor v3.
        self.cc: Vegas | None = None
        self.cc_params: CCParams | None = None
        self._cc_hop = -1
        self._closing = False
        self.clock: Callable[[], float] = time.monotonic
        self._ready: deque[Stream] = deque()
        self._pending_data: dict[Stream, list[bytes | bytearray]] = {}
        self._header = struct.pack(">IB", circ_id, _CELL_RELAY)
        self.cells_received = 0
        self.cells_sent = 0
        # Conflux (prop 329): the set this circuit is a leg of, if any.
        self.conflux: ConfluxSet | None = None
        self.conflux_leg: ConfluxLeg | None = None

    # -- building ------------------------------------------------------------

    @property
    def hop_count(self) -> int:
        return len(self.crypto.hops)

    def send_create_fast(self) -> None:
        x, payload = handshake.fast_client_create()
        self._pending = ("created_fast", x)
        self.channel._queue_cell(self.circ_id, CellCommand.CREATE_FAST, encode_create_fast(payload))

    def send_create2(self, rsa_id: bytes, ntor_key: bytes) -> None:
        state, onionskin = handshake.ntor_client_create(rsa_id, ntor_key)
        self._pending = ("created2", state)
        self.channel._queue_cell(
            self.circ_id, CellCommand.CREATE2, encode_create2(handshake.NTOR_HTYPE, onionskin)
        )

    def send_extend2(
        self,
        link_specifiers: list[LinkSpecifier],
        rsa_id: bytes,
        ntor_key: bytes,
        *,
        ed_id: bytes | None = None,
        congestion_control: CCParams | None = None,
    ) -> None:
        """EXTEND2 to the next hop: ntor, or - with ``congestion_control`` and the
        relay's Ed25519 ``ed_id`` - ntor v3 asking it for congestion control (what C tor
        does for the exit of a circuit, prop 324 §10)."""
        if self.state is not CircuitState.BUILDING or not self.crypto.hops:
            raise RuntimeError("extend on a circuit that is not being built")
        if congestion_control is not None and congestion_control.enabled:
            if ed_id is None:
                raise ValueError("ntor v3 needs the relay's Ed25519 identity")
            state3, onionskin = handshake.ntor_v3_client_create(
                ed_id, ntor_key, cc_request_message()
            )
            self._pending = ("extended2", (state3, congestion_control))
            body = encode_extend2(link_specifiers, handshake.NTOR_V3_HTYPE, onionskin)
        else:
            state, onionskin = handshake.ntor_client_create(rsa_id, ntor_key)
            self._pending = ("extended2", state)
            body = encode_extend2(link_specifiers, handshake.NTOR_HTYPE, onionskin)
        self.send_relay(RelayCommand.EXTEND2, 0, body, early=True)

    def add_virtual_hop(
        self,
        df: bytes,
        db: bytes,
        kf: bytes,
        kb: bytes,
        *,
        congestion_control: CCParams | None = None,
        sendme_inc: int = 0,
    ) -> None:
        """Append the onion-service hop (rend-spec §4.2.1: SHA3-256, AES-256).

        ``congestion_control``: INTRODUCE1 asked the service for it (the descriptor's
        flow-control line offered it, with ``sendme_inc``), so the service now runs
        prop 324 with us on this hop, as an exit would.
        """
        cc = congestion_control if congestion_control is not None and sendme_inc > 0 else None
        self._add_hop(HopCrypto(df, db, kf, kb, hs=True), sendme_inc if cc else None)
        if cc is not None:
            self.cc = Vegas(cc, sendme_inc)
            self.cc_params = cc
            self._cc_hop = len(self.crypto.hops) - 1

    def mark_open(self) -> None:
        if self.state is CircuitState.BUILDING:
            self.state = CircuitState.OPEN

    @property
    def is_usable(self) -> bool:
        """Open and not being torn down: cells may still be sent on it."""
        return self.state is CircuitState.OPEN and not self._closing

    @property
    def stream_owner(self) -> Circuit:
        """The circuit whose streams this one carries: itself, or its conflux set's owner."""
        cfx = self.conflux
        if cfx is not None and cfx.owner is not None:
            return cfx.owner
        return self

    def _conflux_linked(self) -> ConfluxSet | None:
        """The set, once streams may use it and this leg is linked (else None)."""
        cfx = self.conflux
        if cfx is None or not cfx.finalized:
            return None
        leg = self.conflux_leg
        return cfx if leg is not None and leg.state is LegState.LINKED else None

    def _add_hop(self, hop: HopCrypto, sendme_inc: int | None = None) -> None:
        """Add a hop; ``sendme_inc``: congestion control was negotiated with it."""
        self.crypto.add_hop(hop)
        if sendme_inc is None:
            self._package_window.append(self._circwindow)
            self._deliver_window.append(self._circwindow)
            self._sendme_inc.append(CIRCWINDOW_INCREMENT)
            self._sendme_at.append(self._circwindow - CIRCWINDOW_INCREMENT)
        else:
            # C tor keeps counting the deliver window from CIRCWINDOW_START and sends a
            # SENDME each time it is sendme_inc below; packaging has no fixed window.
            self._package_window.append(0)
            self._deliver_window.append(CIRCWINDOW_START)
            self._sendme_inc.append(sendme_inc)
            self._sendme_at.append(CIRCWINDOW_START - sendme_inc)
        self._expected_sendme.append(deque())

    def _complete_handshake(self, reply_kind: str, reply: bytes | tuple[bytes, bytes]) -> None:
        """``reply_kind`` names the cell that answered: it must be the one we wait for.

        (A CREATED2 answering CREATE_FAST used to reach the tuple unpacking below and
        raise ValueError, which closed the whole channel instead of this circuit.)
        """
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != reply_kind:
            raise RemoteProtocolError(f"unexpected {reply_kind.upper()} reply")
        kind, state = pending
        sendme_inc: int | None = None
        if isinstance(reply, tuple):  # CREATED_FAST: (Y, KH)
            keys = handshake.fast_client_complete(state, reply[0], reply[1])
        elif isinstance(state, tuple):  # ntor v3 with a congestion control request
            state3, params = state
            keys, server_message = handshake.ntor_v3_client_complete(state3, reply)
            sendme_inc = parse_cc_response(server_message, params)
            if sendme_inc is not None:
                self.cc = Vegas(params, sendme_inc)
                self.cc_params = params
                self._cc_hop = len(self.crypto.hops)
        else:
            keys = handshake.ntor_client_complete(state, reply)
        self._add_hop(HopCrypto(keys.df, keys.db, keys.kf, keys.kb), sendme_inc)
        self.on_event(HopAdded(self.hop_count))

    # -- inbound -------------------------------------------------------------

    def handle_cell(self, command: int, payload: bytes | bytearray) -> None:
        """A cell for this circuit arrived on the channel.

        A ``bytearray`` payload belongs to us from here on (RELAY cells are
        decrypted in place).
        """
        if self.state is CircuitState.CLOSED:
            return
        if command == _CELL_RELAY:
            self.handle_relay_cells(payload if type(payload) is bytearray else bytearray(payload))
            return
        payload = bytes(payload)  # the codecs below take bytes; these cells are rare
        try:
            if command == CellCommand.DESTROY:
                reason = decode_destroy(payload)
                self._closed(reason, "circuit destroyed by relay", remote=True)
            elif command == CellCommand.CREATED_FAST:
                self._complete_handshake("created_fast", decode_created_fast(payload))
            elif command == CellCommand.CREATED2:
                self._complete_handshake("created2", decode_created2(payload))
            elif command == _CELL_RELAY_EARLY:
                raise RemoteProtocolError("relay sent RELAY_EARLY towards the client")
            # Other commands on a circuit are ignored (tor-spec: drop unknown).
        except RemoteProtocolError as exc:
            self.destroy(1, f"protocol violation: {exc}")

    def handle_relay_cells(self, block: bytearray) -> None:
        """RELAY payloads for this circuit, back to back in ``block``, in arrival order.

        The channel hands over each run of consecutive RELAY cells for one circuit
        at once, so `OnionCrypto.decrypt_inbound_run` can peel every layer off the
        whole run in one cipher call.  The cells are then handled one by one,
        exactly as they would be singly.  ``block`` is consumed.
        """
        if self.state is CircuitState.CLOSED:
            return
        cfx = self._conflux_linked()
        if cfx is not None:
            owner = cfx.owner
            assert owner is not None
            try:
                self._handle_run_conflux(block, cfx, owner)
            finally:
                if owner._pending_data and owner.state is not CircuitState.CLOSED:
                    owner._flush_stream_data()
            return
        try:
            self._handle_run(block)
        finally:
            if self._pending_data and self.state is not CircuitState.CLOSED:
                self._flush_stream_data()

    def _handle_run(self, block: bytearray) -> None:
        crypto = self.crypto
        n_hops = len(crypto.hops)
        hop_of, digests, block = crypto.decrypt_inbound_run(block)
        if not n_hops:
            self._handle_rest(block, 0, hop_of, digests, 0)
            return
        last = n_hops - 1
        # The DATA fast path below does inline, for a cell from the last hop that
        # neither triggers a circuit SENDME nor goes to a paused or closing stream,
        # exactly what `_handle_relay_body` and `_stream_data` do; every other cell
        # goes through them.  The circuit window and cell count live in locals
        # while the fast path runs and are written back around the general path.
        deliver_window = self._deliver_window
        window = deliver_window[last]
        fast_above = max(self._sendme_at[last], -1) + 1  # cells must leave window > this
        streams = self.streams
        pending = self._pending_data
        open_state = StreamState.OPEN
        data_cmd = _CMD_DATA
        body_len = RELAY_BODY_LEN
        fast = 0
        cached_id = -1  # stream ID of `stream`, an open stream taking data
        stream: Any = None
        chunks: Any = None
        header = _RELAY_HEADER_SHORT.unpack_from
        count = len(hop_of)
        # Stretches of full DATA cells for one stream are taken whole: their headers
        # are checked with strided slices and their data joined in one call.
        mv = memoryview(block)
        i = 0
        while i < count:
            hop = hop_of[i]
            o = i * body_len
            if hop == last:
                command, stream_id, length = header(block, o)
                if command == data_cmd and length <= RELAY_DATA_LEN:
                    if stream_id != cached_id:
                        stream = streams.get(stream_id)
                        if stream is None:
                            if window > fast_above:
                                window -= 1  # DATA for a stream we closed still counts
                                fast += 1
                                i += 1
                                continue
                        else:
                            flow = stream.flow
                            if stream.state is not open_state or (
                                flow is not None and (stream.delivery_paused or flow.held_bytes)
                            ):
                                stream = None  # the general path
                            else:
                                cached_id = stream_id
                                chunks = pending.get(stream)
                                if chunks is None:
                                    chunks = pending[stream] = []
                    if stream is not None and stream.deliver_window > 0:
                        m = min(count - i, stream.deliver_window, _MAX_STRETCH)
                        if m > 1 and length == RELAY_DATA_LEN:
                            m = _full_data_stretch(block, o, m, hop_of, i, last)
                            if m > 1:
                                # Views into the run: `_flush_stream_data` joins them
                                # with the rest of the stream's data in one copy.
                                chunks.extend(
                                    [
                                        mv[p : p + RELAY_DATA_LEN]
                                        for p in range(o + 11, o + m * body_len, body_len)
                                    ]
                                )
                                stream.deliver_window -= m
                                if window - m >= fast_above:
                                    window -= m
                                else:  # circuit SENDMEs are due within the stretch
                                    deliver_window[last] = window
                                    self._count_data_cells(last, digests, i, m)
                                    window = deliver_window[last]
                                fast += m
                                i += m
                                continue
                        if window > fast_above:
                            stream.deliver_window -= 1
                            chunks.append(block[o + 11 : o + 11 + length])
                            window -= 1
                            fast += 1
                            i += 1
                            continue
            # The general path, which may change anything the fast path cached.
            deliver_window[last] = window
            self.cells_received += fast
            fast = 0
            cached_id = -1
            if not self._general_cell(block, i, hop, digests, n_hops):
                return  # a cell (or a callback) closed the circuit: drop the rest
            if len(crypto.hops) != n_hops:
                # EXTENDED2 added a hop: the fast path's idea of the last hop is stale.
                self._handle_rest(block, i + 1, hop_of, digests, n_hops)
                return
            window = deliver_window[last]
            i += 1
        deliver_window[last] = window
        self.cells_received += fast

    def _handle_rest(
        self, block: bytearray, start: int, hop_of: list[int], digests: list[Any], n_hops: int
    ) -> None:
        """The cells of a run after one that added a hop, each the general way."""
        for i in range(start, len(hop_of)):
            if not self._general_cell(block, i, hop_of[i], digests, n_hops):
                return

    def _general_cell(
        self, block: bytearray, i: int, hop: int, digests: list[Any], n_hops: int
    ) -> bool:
        """Cell ``i`` of a run, one at a time; False once the circuit is closed."""
        o = i * RELAY_BODY_LEN
        body = block[o : o + RELAY_BODY_LEN]
        try:
            if hop < 0:
                # No hop we had when the run arrived knew this cell.  A hop added since
                # (EXTENDED2 earlier in the run) gets its turn, as it would have cell by
                # cell; otherwise this raises.
                hop, body = self.crypto.decrypt_inbound(body, first_hop=n_hops)
                digest = self.crypto.hops[hop].bwd_digest.digest()[:20]
            else:
                digest = digests[i]
            self._handle_relay_body(hop, body, digest)
        except RemoteProtocolError as exc:
            self.destroy(1, f"protocol violation: {exc}")
            return False
        return self.state is not CircuitState.CLOSED

    def _handle_relay_body(self, hop: int, body: bytearray, digest: bytes) -> None:
        """One decrypted relay cell from ``hop``; ``digest``: that hop's digest after it
        (a SENDME quotes its first 20 bytes)."""
        command, _rec, stream_id, _digest, length = _RELAY_HEADER.unpack_from(body)
        if length > RELAY_DATA_LEN:
            raise RemoteProtocolError(f"relay cell length {length} > {RELAY_DATA_LEN}")
        self.cells_received += 1
        if command == _CMD_DATA:
            self._count_data_cell(hop, digest)
            stream = self.streams.get(stream_id)
            if stream is not None and hop == len(self.crypto.hops) - 1:
                self._stream_data(stream, bytes(body[11 : 11 + length]))
            return
        data = bytes(body[11 : 11 + length])
        if stream_id == 0:
            self._handle_circuit_message(command, data, hop)
        elif command in _STREAM_COMMANDS:
            stream = self.streams.get(stream_id)
            if stream is not None:
                if hop != len(self.crypto.hops) - 1:
                    raise RemoteProtocolError("stream cell from a hop that is not the last")
                self._handle_stream_message(stream, command, data)
        # A recognised cell with an unknown command is dropped (tor-spec §6.1).

    def _count_data_cell(self, hop: int, digest: bytes) -> None:
        """A DATA cell from ``hop`` counts against the circuit window, even for a stream
        we already closed (tor-spec §7.3); SENDME when it is due."""
        window = self._deliver_window[hop] - 1
        if window < 0:
            raise RemoteProtocolError("relay overran the circuit deliver window")
        if window <= self._sendme_at[hop]:
            # The digest of the cell just absorbed authenticates this SENDME (every
            # 100 cells, or every sendme_inc with congestion control).
            self._seal_relay(RelayCommand.SENDME, 0, encode_sendme_v1(digest[:20]), hop=hop)
            window += self._sendme_inc[hop]
        self._deliver_window[hop] = window

    def _count_data_cells(self, hop: int, digests: list[Any], first: int, cells: int) -> None:
        """`_count_data_cell` for the cells ``first .. first + cells - 1`` of a run, at
        once: each SENDME that falls due quotes the digest after its own cell."""
        window = self._deliver_window[hop]
        at = self._sendme_at[hop]
        j, end = first, first + cells
        while j + max(window - at, 1) <= end:
            j += max(window - at, 1)  # cell j - 1 takes the window down to the mark
            window = at + self._sendme_inc[hop]
            self._seal_relay(RelayCommand.SENDME, 0, encode_sendme_v1(digests[j - 1][:20]), hop=hop)
        self._deliver_window[hop] = window - (end - j)

    def _handle_run_conflux(self, block: bytearray, cfx: ConfluxSet, owner: Circuit) -> None:
        """`_handle_run` for a linked conflux leg.

        Multiplexed cells from the exit (the join point) go through the set's sequencing
        and, in order, to the owner's streams - a stretch of full DATA cells for one
        stream as one joined piece; every other cell is this leg's own business (its
        SENDMEs, SWITCH, DROP ...), handled as on any circuit.  Circuit-level flow
        control counts cells as they arrive, whatever their order (prop 329 §2.5).
        """
        crypto = self.crypto
        n_hops = len(crypto.hops)
        hop_of, digests, block = crypto.decrypt_inbound_run(block)
        leg = self.conflux_leg
        assert leg is not None
        last = n_hops - 1
        header = _RELAY_HEADER_SHORT.unpack_from
        body_len = RELAY_BODY_LEN
        count = len(hop_of)
        mv = memoryview(block)
        i = 0
        while i < count:
            hop = hop_of[i]
            o = i * body_len
            if hop == last:
                command, stream_id, length = header(block, o)
                # (C tor drops BEGIN/CONNECTED/END/RESOLVE(D) without a stream unsequenced.)
                if command in MULTIPLEXED and (stream_id or command not in NEEDS_STREAM):
                    m = 1
                    try:
                        if length > RELAY_DATA_LEN:
                            raise RemoteProtocolError(
                                f"relay cell length {length} > {RELAY_DATA_LEN}"
                            )
                        if command == _CMD_DATA:
                            # A stretch of full DATA cells for one stream goes as one.
                            if length == RELAY_DATA_LEN and count - i > 1:
                                m = _full_data_stretch(
                                    block, o, min(count - i, _MAX_STRETCH), hop_of, i, last
                                )
                            if m > 1:
                                self._count_data_cells(last, digests, i, m)
                                data = _join_data(mv, o, m)
                            else:
                                self._count_data_cell(last, digests[i])
                                data = bytes(block[o + 11 : o + 11 + length])
                        else:
                            data = bytes(block[o + 11 : o + 11 + length])
                        self.cells_received += m
                        if cfx.arrive(leg, m):
                            owner._deliver_multiplexed(command, stream_id, data, m)
                            while owner.state is CircuitState.OPEN:
                                held = cfx.next_in_order()
                                if held is None:
                                    break
                                owner._deliver_multiplexed(
                                    held.command, held.stream_id, held.data, held.cells
                                )
                        else:
                            cfx.hold(leg, m, command, stream_id, data)
                    except RemoteProtocolError as exc:
                        self.destroy(1, f"protocol violation: {exc}")
                        return
                    if self.state is CircuitState.CLOSED:
                        return
                    i += m
                    continue
            if not self._general_cell(block, i, hop, digests, n_hops):
                return
            i += 1

    def _deliver_multiplexed(self, command: int, stream_id: int, data: bytes, cells: int) -> None:
        """A multiplexed message from a conflux leg, in sequence order (on the owner)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream we closed (its DATA still counted), or a bogus one
        if command == _CMD_DATA:
            self._stream_data(stream, data, cells)
        elif command in _STREAM_COMMANDS:
            self._handle_stream_message(stream, command, data)
        # BEGIN/RESOLVE from the exit: dropped (tor-spec §6.1).

    def _handle_circuit_message(self, command: int, data: bytes, hop: int) -> None:
        if command == _CMD_SENDME:
            self._circuit_sendme_received(hop, data)
        elif command == RelayCommand.EXTENDED2:
            if self._pending is None:
                raise RemoteProtocolError("EXTENDED2 without an EXTEND2")
            self._complete_handshake("extended2", decode_extended2(data))
        elif command == RelayCommand.TRUNCATED:
            reason = decode_truncated(data)
            # A partial circuit is of no use to us: tear it all down (as C tor).
            self.destroy(reason, "circuit truncated by relay", remote=True)
        elif command == RelayCommand.DROP:
            pass
        elif RelayCommand.CONFLUX_LINK <= command <= RelayCommand.CONFLUX_SWITCH:
            self._conflux_message(command, data, hop)
        else:
            self.on_event(ControlCell(command, bytes(data), hop))

    def _conflux_message(self, command: int, data: bytes, hop: int) -> None:
        """LINKED and SWITCH, from the exit of a conflux leg only (prop 329 §4.2.1)."""
        cfx, leg = self.conflux, self.conflux_leg
        if cfx is None or leg is None:
            raise RemoteProtocolError(f"conflux message {command} on a circuit without conflux")
        if hop != len(self.crypto.hops) - 1:
            raise RemoteProtocolError("conflux message from a hop that is not the exit")
        if command == RelayCommand.CONFLUX_LINKED:
            cfx.linked(leg, data, self._now_usec())
            self._seal_relay(RelayCommand.CONFLUX_LINKED_ACK, 0, b"")
            self.on_event(ConfluxLinked(leg.link_rtt_usec))
        elif command == RelayCommand.CONFLUX_SWITCH:
            cfx.switch_received(leg, data)
        else:
            raise RemoteProtocolError(f"conflux message {command} is not for a client")

    def _circuit_sendme_received(self, hop: int, data: bytes) -> None:
        version, digest = decode_sendme(data)
        if version < self._sendme_accept_min:
            raise RemoteProtocolError(f"SENDME version {version} below the accepted minimum")
        expected = self._expected_sendme[hop]
        if not expected:
            raise RemoteProtocolError("unexpected circuit SENDME")
        want = expected.popleft()
        if version >= 1 and digest != want:
            raise RemoteProtocolError("circuit SENDME digest does not match")
        if hop == self._cc_hop and self.cc is not None:
            self.cc.on_sendme(int(self.clock() * 1_000_000))
        else:
            window = self._package_window[hop] + CIRCWINDOW_INCREMENT
            if window > self._circwindow:
                raise RemoteProtocolError("circuit SENDME overflowed the package window")
            self._package_window[hop] = window
        self.stream_owner._package()

    def _handle_stream_message(self, stream: Stream, command: int, data: bytes) -> None:
        if self._pending_data:
            self._flush_stream_data()  # DATA that came before this message goes first
        if command == _CMD_SENDME:
            if stream.flow is not None:
                # As C tor (sendme_process_stream_level): a protocol violation.
                raise RemoteProtocolError("stream SENDME on a congestion-controlled circuit")
            stream.package_window += STREAM_WINDOW_INCREMENT
            if stream.package_window > STREAM_WINDOW_START:
                raise RemoteProtocolError("stream SENDME overflowed the stream window")
            if stream.send_buffer:
                self._schedule_stream(stream)
        elif command == RelayCommand.XOFF or command == RelayCommand.XON:
            self._xon_xoff_received(stream, command, data)
        elif command == RelayCommand.CONNECTED:
            if stream.state is not StreamState.CONNECTING:
                raise RemoteProtocolError("CONNECTED on a stream that is not connecting")
            stream.state = StreamState.OPEN
            stream.sink.stream_connected(decode_connected(data))
            if stream.send_buffer:
                self._schedule_stream(stream)
            elif stream.close_after_flush:
                self._end_stream(stream, EndReason.DONE)
        elif command == RelayCommand.END:
            end = decode_end(data)
            self._forget_stream(stream)
            flow = stream.flow
            if flow is not None and flow.held_bytes:
                # Data held for a paused reader goes first (C tor flushes the edge
                # connection's outbuf before closing it): END when it resumes.
                flow.end = end
                return
            stream.sink.stream_ended(end.reason, end, "stream ended by exit")
        elif command == RelayCommand.RESOLVED:
            if stream.state is not StreamState.RESOLVING:
                raise RemoteProtocolError("RESOLVED for a stream that did not RESOLVE")
            self._forget_stream(stream)
            stream.sink.stream_resolved(decode_resolved(data))

    def _stream_data(self, stream: Stream, data: bytes, cells: int = 1) -> None:
        if stream.state is not StreamState.OPEN:
            if stream.state is StreamState.CONNECTING:
                raise RemoteProtocolError("DATA before CONNECTED")
            return
        stream.deliver_window -= cells
        if stream.deliver_window < 0:
            # As C tor (relay.c): a stream window below 0 is a protocol error that
            # kills the circuit, not just the stream (spec-map §4.1).
            raise RemoteProtocolError("relay overran the stream deliver window")
        flow = stream.flow
        if flow is not None and (stream.delivery_paused or flow.held_bytes):
            # The reader is paused (or still has held data to take first): hold it.
            self._hold(stream, flow, data)
            params = self.cc_params
            if params is not None and flow.after_xoff > params.overrun_bytes:
                raise RemoteProtocolError(
                    f"exit sent {flow.after_xoff} bytes on a stream after our XOFF"
                )
            return
        # Delivered at the end of the run, joined: one application write per stream
        # per run of cells instead of one per 498-byte cell.
        pending = self._pending_data.get(stream)
        if pending is None:
            self._pending_data[stream] = [data]
        else:
            pending.append(data)

    def _flush_stream_data(self) -> None:
        """Hand buffered DATA to the sinks, then grant stream SENDMEs (if not paused)."""
        # The dict keeps its identity: `_handle_run` holds it across calls to here.
        pending_data = self._pending_data
        while pending_data:
            pending = list(pending_data.items())
            pending_data.clear()
            for stream, chunks in pending:
                if stream.state is not StreamState.OPEN:
                    continue
                data = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
                flow = stream.flow
                if flow is not None and (stream.delivery_paused or flow.held_bytes):
                    self._hold(stream, flow, data)  # paused by another stream's reader
                    continue
                stream.sink.stream_data(data)
                if not stream.delivery_paused and stream.deliver_window <= (
                    STREAM_WINDOW_START - STREAM_WINDOW_INCREMENT
                ):
                    self._maybe_stream_sendme(stream)

    def _maybe_stream_sendme(self, stream: Stream) -> None:
        if stream.state is not StreamState.OPEN:
            return
        while stream.deliver_window <= STREAM_WINDOW_START - STREAM_WINDOW_INCREMENT:
            stream.deliver_window += STREAM_WINDOW_INCREMENT
            self.send_relay(RelayCommand.SENDME, stream.stream_id, b"")

    # -- XON/XOFF (prop 324 §4; C tor congestion_control_flow.c) ----------------------

    def _now_usec(self) -> int:
        return int(self.clock() * 1_000_000)

    def _hold(self, stream: Stream, flow: StreamFlow, data: bytes) -> None:
        """Keep data for a paused reader; XOFF once too much piles up (as C tor's outbuf)."""
        flow.hold(data)
        if flow.xoff_sent:
            flow.after_xoff += len(data)
            return
        params = self.cc_params
        if params is None or self._closing or self.state is not CircuitState.OPEN:
            return
        if (
            flow.should_send_xoff(params.xoff_client, self._now_usec())
            # Never let the grace period (a clock that does not move) hold unbounded data.
            or flow.held_bytes > params.max_held_bytes
        ):
            flow.xoff_sent = True
            flow.after_xoff = 0
            flow.xoffs_sent += 1
            self.send_relay(RelayCommand.XOFF, stream.stream_id, encode_xoff())

    def _resume_flow(self, stream: Stream) -> None:
        """The reader resumed: hand it what we held; XON once it has taken all of it."""
        flow = stream.flow
        if flow is None:
            return
        end = flow.end
        if flow.held_bytes:
            # Also after the stream ended (exit's END deferred, or our own close): it
            # arrived before the END.
            stream.sink.stream_data(flow.take_held())
        if end is not None:
            flow.end = None
            stream.sink.stream_ended(end.reason, end, "stream ended by exit")
            return
        if (
            flow.xoff_sent
            and not flow.held_bytes
            and not stream.delivery_paused
            and stream.state is StreamState.OPEN
            and self.state is CircuitState.OPEN
            and not self._closing
        ):
            # C tor sends XON when its outbuf has drained; kbps_ewma 0 = no rate advice.
            flow.xoff_sent = False
            flow.after_xoff = 0
            flow.xons_sent += 1
            self.send_relay(RelayCommand.XON, stream.stream_id, encode_xon(0))

    def _xon_xoff_received(self, stream: Stream, command: int, data: bytes) -> None:
        """XOFF/XON from the exit: stop/resume packaging this stream."""
        flow = stream.flow
        if flow is None:
            return  # C tor ignores them on a circuit without congestion control
        if command == RelayCommand.XOFF:
            if flow.xoff_received:
                return  # C tor: "Got multiple XOFF on connection" - ignored
            flow.xoffs_received += 1
            flow.xoff_received = True
            stream.package_window = 0  # `_package` skips the stream until XON
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
                self._schedule_stream(stream)

    # -- outbound ------------------------------------------------------------

    def send_relay(
        self,
        command: int,
        stream_id: int,
        data: bytes = b"",
        *,
        hop: int = -1,
        early: bool = False,
    ) -> bytes:
        """Seal and queue one relay cell; returns the hop's running digest (20 bytes).

        On a linked conflux set, a multiplexed command for the exit goes on the leg the
        set's scheduler picks (after a SWITCH if that is another leg than last time).
        """
        cfx = self._conflux_linked()
        if (
            cfx is not None
            and command in MULTIPLEXED
            and (hop == -1 or hop == len(self.crypto.hops) - 1)
        ):
            if self.state is CircuitState.CLOSED:
                raise RuntimeError("circuit is closed")
            leg = cfx.choose_send_leg(data=command == _CMD_DATA)
            if leg is None:
                raise RuntimeError("no conflux leg can take DATA now")
            target = leg.circuit
            target._conflux_switch(cfx, leg)
            digest = target._seal_relay(command, stream_id, data)
            cfx.note_sent(leg, 1)
            return digest
        return self._seal_relay(command, stream_id, data, hop=hop, early=early)

    def _conflux_switch(self, cfx: ConfluxSet, leg: ConfluxLeg) -> None:
        """About to send multiplexed cells on this leg: SWITCH first if it is new."""
        relative = cfx.switch_to(leg)
        if relative:
            self._seal_relay(_CMD_SWITCH, 0, encode_switch(relative))

    def _seal_relay(
        self,
        command: int,
        stream_id: int,
        data: bytes = b"",
        *,
        hop: int = -1,
        early: bool = False,
    ) -> bytes:
        """`send_relay` on this very circuit, whatever its conflux set would choose."""
        if self.state is CircuitState.CLOSED:
            raise RuntimeError("circuit is closed")
        length = len(data)
        if length > RELAY_DATA_LEN:
            raise ValueError("relay message too long for one cell")
        header = self._header
        if early:
            # Refuse before sealing: sealing advances the digest and keystream.
            if self._relay_early_sent >= MAX_RELAY_EARLY:
                raise RuntimeError("RELAY_EARLY budget spent")
            self._relay_early_sent += 1
            header = struct.pack(">IB", self.circ_id, _CELL_RELAY_EARLY)
        body = bytearray(_RELAY_HEADER.pack(command, 0, stream_id, 0, length))
        body += data
        pad = RELAY_DATA_LEN - length
        if pad > 4:
            body += b"\0\0\0\0"
            body += _padding.take(pad - 4)
        elif pad:
            body += bytes(pad)
        if hop < 0:
            hop += len(self.crypto.hops)
        payload, digest = self.crypto.encrypt_outbound(body, hop)
        out = self.channel.outbuf
        out += header
        out += payload
        self.cells_sent += 1
        self.channel._wants_flush()
        return digest

    def _schedule_stream(self, stream: Stream) -> None:
        if stream not in self._ready:
            self._ready.append(stream)
        self._package()

    def _package(self) -> None:
        """Turn buffered stream data into DATA cells while the windows allow.

        On a conflux set each batch goes on the leg the scheduler picks, within that
        leg's congestion window.
        """
        ready = self._ready
        if not ready or self.state is not CircuitState.OPEN:
            return
        cfx = self._conflux_linked()
        target = self
        leg: ConfluxLeg | None = None
        while ready:
            if cfx is not None:
                leg = cfx.choose_send_leg(data=True)
                if leg is None:
                    break
                target = leg.circuit
            hop = len(target.crypto.hops) - 1
            cc = target.cc if hop == target._cc_hop else None
            # With congestion control, cwnd - inflight; else the fixed package window.
            window = target._package_window[hop] if cc is None else cc.cwnd - cc.inflight
            if window <= 0:
                break
            stream = ready[0]
            buf = stream.send_buffer
            # Full cells go out in one batch; then at most one short (padded) cell.
            sent = min(
                len(buf) // RELAY_DATA_LEN,
                stream.package_window,
                window,
                _FAIR_SHARE_CELLS,
            )
            short = (
                0 < len(buf) - sent * RELAY_DATA_LEN < RELAY_DATA_LEN
                and sent < _FAIR_SHARE_CELLS
                and stream.package_window > sent
                and window > sent
            )
            if leg is not None and (sent or short):
                assert cfx is not None
                target._conflux_switch(cfx, leg)
                cfx.note_sent(leg, sent + short)
            if sent > 0:
                target._send_full_data_cells(stream, sent, hop)
            if short:
                target._send_short_data_cell(stream, hop)
            if not buf or stream.package_window <= 0:
                ready.popleft()
                if not buf and stream.close_after_flush:
                    self._end_stream(stream, EndReason.DONE)
            else:
                ready.rotate(-1)
            if stream.blocked_writer and len(buf) < SEND_BUFFER_HIGH_WATER // 2:
                stream.blocked_writer = False
                stream.sink.stream_writable()

    def _send_short_data_cell(self, stream: Stream, hop: int) -> None:
        """The whole (short) send buffer as one padded DATA cell; the caller checked the
        windows."""
        buf = stream.send_buffer
        digest = self._seal_relay(_CMD_DATA, stream.stream_id, bytes(buf), hop=hop)
        if stream.flow is not None:
            stream.flow.bytes_sent += len(buf)
        buf.clear()
        stream.package_window -= 1
        count = self._package_window[hop] - 1
        recorded = 0
        if count % self._sendme_inc[hop] == 0:
            self._expected_sendme[hop].append(digest)
            recorded = 1
        cc = self.cc if hop == self._cc_hop else None
        if cc is not None:
            cc.note_sent(1, recorded, self._now_usec())
            count %= cc.sendme_inc
        self._package_window[hop] = count

    def _send_full_data_cells(self, stream: Stream, count: int, hop: int) -> None:
        """Seal and queue ``count`` full DATA cells from the front of the send buffer.

        The upload hot path: what `send_relay` does per cell, in two passes.  First
        each body is built in one scratch buffer (the send buffer is read through a
        memoryview and trimmed once) and absorbed into the target hop's digest; then
        every layer encrypts the whole batch in one cipher call, which gives the same
        bytes as one call per cell since AES-CTR keystreams carry over between
        calls.  The caller has checked both windows.  Full cells carry no padding,
        so the cells are exactly what `send_relay` would have made.
        """
        digest = self.crypto.outbound_digest(hop)
        prefix = _RELAY_HEADER.pack(_CMD_DATA, 0, stream.stream_id, 0, RELAY_DATA_LEN)
        expected = self._expected_sendme[hop]
        recorded = len(expected)
        window = self._package_window[hop]
        inc = self._sendme_inc[hop]
        body = bytearray(RELAY_BODY_LEN)
        block = bytearray()
        src = memoryview(stream.send_buffer)
        pos = 0
        try:
            for _ in range(count):
                body[:11] = prefix
                body[11:] = src[pos : pos + RELAY_DATA_LEN]
                pos += RELAY_DATA_LEN
                digest.update(body)
                full = digest.digest()
                body[5:9] = full[:4]
                block += body
                window -= 1
                if window % inc == 0:
                    # This cell's digest is what the relay's next SENDME must quote.
                    expected.append(full[:20])
        finally:
            src.release()
        del stream.send_buffer[:pos]
        block = self.crypto.seal_layers(block, hop)
        header = self._header
        out = self.channel.outbuf
        cells = memoryview(block)
        for o in range(0, len(block), RELAY_BODY_LEN):
            out += header
            out += cells[o : o + RELAY_BODY_LEN]
        cells.release()
        cc = self.cc if hop == self._cc_hop else None
        if cc is not None:
            # Congestion control: `window` only counts cells modulo sendme_inc.
            cc.note_sent(count, len(expected) - recorded, self._now_usec())
            window %= inc
        if stream.flow is not None:
            stream.flow.bytes_sent += count * RELAY_DATA_LEN
        self._package_window[hop] = window
        stream.package_window -= count
        self.cells_sent += count
        self.channel._wants_flush()

    # -- streams -------------------------------------------------------------

    def _allocate_stream_id(self) -> int:
        for _ in range(65535):
            sid = self._next_stream_id
            self._next_stream_id = sid % 65535 + 1
            if sid not in self.streams:
                return sid
        raise RuntimeError("no free stream ids on this circuit")

    def open_stream(self, sink: StreamSink, host: str, port: int, flags: int = 0) -> Stream:
        """RELAY_BEGIN to ``host:port`` at the last hop (an onion service: host "")."""
        stream = self._new_stream(sink, f"{host}:{port}")
        self.send_relay(RelayCommand.BEGIN, stream.stream_id, encode_begin(host, port, flags))
        return stream

    def open_dir_stream(self, sink: StreamSink) -> Stream:
        if self.conflux is not None:
            raise RuntimeError("no directory streams on a conflux set")
        stream = self._new_stream(sink, "directory")
        self.send_relay(RelayCommand.BEGIN_DIR, stream.stream_id, b"")
        return stream

    def resolve(self, sink: StreamSink, hostname: str) -> Stream:
        stream = self._new_stream(sink, hostname)
        stream.state = StreamState.RESOLVING
        self.send_relay(RelayCommand.RESOLVE, stream.stream_id, encode_resolve(hostname))
        return stream

    def _new_stream(self, sink: StreamSink, target: str) -> Stream:
        if self.state is not CircuitState.OPEN:
            raise RuntimeError("circuit is not open")
        stream = Stream(self, self._allocate_stream_id(), sink, target)
        if self.cc is not None and self._cc_hop == len(self.crypto.hops) - 1:
            # Flow control replaces the stream windows (prop 324 §4): no stream SENDMEs
            # either way; XON/XOFF limit what the exit sends and what we send.
            stream.flow = StreamFlow()
            stream.package_window = UNLIMITED_WINDOW
            stream.deliver_window = UNLIMITED_WINDOW
        self.streams[stream.stream_id] = stream
        return stream

    def _forget_stream(self, stream: Stream) -> None:
        stream.state = StreamState.CLOSED
        stream.send_buffer.clear()
        self.streams.pop(stream.stream_id, None)
        with contextlib.suppress(ValueError):
            self._ready.remove(stream)

    def _end_stream(self, stream: Stream, reason: int) -> None:
        # (Data held for a paused reader stays: it arrived before our END, as it would
        # have reached the reader without congestion control.  `Stream.abort` drops it.)
        if stream.state is StreamState.CLOSED:
            return
        resolving = stream.state is StreamState.RESOLVING
        self._forget_stream(stream)
        if self.state is not CircuitState.CLOSED and not resolving:
            self.send_relay(RelayCommand.END, stream.stream_id, encode_end(reason))

    # -- teardown ------------------------------------------------------------

    def destroy(
        self, reason: int = 0, message: str = "closed locally", *, remote: bool = False
    ) -> None:
        """Close the circuit: DESTROY to the first hop, end every stream."""
        if self.state is CircuitState.CLOSED:
            return
        self.channel._queue_cell(self.circ_id, CellCommand.DESTROY, encode_destroy(0))
        self._closed(reason, message, remote=remote)

    def _closed(self, reason: int, message: str, *, remote: bool) -> None:
        self._closing = True
        if self._pending_data and self.state is not CircuitState.CLOSED:
            with contextlib.suppress(Exception):
                self._flush_stream_data()
        if self.state is CircuitState.CLOSED:
            return
        self.state = CircuitState.CLOSED
        self._pending = None
        event = CircuitClosed(reason, message, remote)
        self.closed_reason = event
        self.channel._forget_circuit(self.circ_id)
        streams = list(self.streams.values())
        self.streams.clear()
        self._ready.clear()
        # Streams learn why: the DESTROY/TRUNCATED reason goes into their message.
        text = f"circuit closed: {message} ({DestroyReason.describe(reason)})"
        for stream in streams:
            stream.state = StreamState.CLOSED
            stream.send_buffer.clear()  # the application may keep the Stream around
            if stream.flow is not None:
                stream.flow.take_held()  # the stream failed: no data after its end
        try:
            for stream in streams:
                stream.sink.stream_ended(EndReason.DESTROY, None, text)
            self.on_event(event)
        finally:
            # Even if a callback raised: the rest of a conflux set goes down with this leg.
            if self.conflux is not None:
                self.conflux.leg_closed(self, message)
