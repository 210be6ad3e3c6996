"""One circuit on a channel, sans-I/O: handshakes, hops, relay crypto, circuit messages.

tor-spec §5 (CREATE/EXTEND and their handshakes), §6 (relay cells) and §7.3 (circuit
SENDMEs, through each `Hop`).  A circuit belongs to a `Tunnel` - alone, or as one leg of
a conflux set (proposal 329) - and hands it what is for streams; it never decides which
circuit a cell goes on.  Its cells leave through its channel's `CircuitMux`.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from puretor.errors import RemoteProtocolError
from puretor.proto import handshake
from puretor.proto.cells import (
    CellCommand,
    decode_created2,
    decode_created_fast,
    decode_destroy,
    encode_cell,
    encode_create2,
    encode_create_fast,
)
from puretor.proto.conflux import MULTIPLEXED
from puretor.proto.congestion import CCParams, Vegas, cc_request_message, parse_cc_response
from puretor.proto.fastpath import (
    DATA_OFFSET,
    MAX_STRETCH,
    RELAY_HEADER,
    RELAY_HEADER_SHORT,
    data_views,
    full_data_stretch,
)
from puretor.proto.hop import CIRCWINDOW_START, Hop
from puretor.proto.relaycrypto import HopCrypto, OnionCrypto
from puretor.proto.relaymsg import (
    RELAY_BODY_LEN,
    RELAY_DATA_LEN,
    LinkSpecifier,
    RelayCommand,
    decode_extended2,
    decode_sendme,
    decode_truncated,
    encode_extend2,
    encode_sendme_v1,
)

if TYPE_CHECKING:
    from puretor.proto.channel import Channel
    from puretor.proto.conflux import ConfluxLeg, ConfluxSet
    from puretor.proto.streams import Stream
    from puretor.proto.tunnel import Tunnel

MAX_RELAY_EARLY = 8

_CMD_DATA = RelayCommand.DATA.value
_CMD_SENDME = RelayCommand.SENDME.value
_CELL_RELAY = CellCommand.RELAY.value
_CELL_RELAY_EARLY = CellCommand.RELAY_EARLY.value
# Stream messages that are not sequenced on a conflux set (they are per leg).
_STREAM_SENDME = frozenset({_CMD_SENDME})


class CircuitState(enum.Enum):
    BUILDING = "building"
    OPEN = "open"
    CLOSED = "closed"


# What may happen to a circuit in each state (the rest are programming errors).
_OPENS = {CircuitState.BUILDING: CircuitState.OPEN}
# A controller extends a built circuit (EXTENDCIRCUIT ID): building again until it opens.
_EXTENDS = {CircuitState.OPEN: CircuitState.BUILDING}


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


# -- the handshake in progress -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CreateFast:
    reply = "created_fast"
    x: bytes

    def complete(self, reply: Any) -> tuple[handshake.HopKeys, None]:
        return handshake.fast_client_complete(self.x, reply[0], reply[1]), None


@dataclass(frozen=True, slots=True)
class _Ntor:
    reply: str  # "created2" or "extended2"
    state: handshake.NtorClientState

    def complete(self, reply: Any) -> tuple[handshake.HopKeys, None]:
        return handshake.ntor_client_complete(self.state, reply), None


@dataclass(frozen=True, slots=True)
class _NtorV3:
    """ntor v3 asking the hop for congestion control (prop 324 §10)."""

    reply: str
    state: handshake.NtorV3ClientState
    params: CCParams

    def complete(self, reply: Any) -> tuple[handshake.HopKeys, int | None]:
        keys, server_message = handshake.ntor_v3_client_complete(self.state, reply)
        return keys, parse_cc_response(server_message, self.params)


_Handshake = _CreateFast | _Ntor | _NtorV3


class Circuit:
    """One origin circuit on a channel: a tunnel's only circuit, or a leg of one."""

    def __init__(
        self,
        channel: Channel,
        circ_id: int,
        tunnel: Tunnel,
        *,
        sendme_accept_min_version: int = 0,
        circwindow: int = CIRCWINDOW_START,
    ) -> None:
        self.channel = channel
        self.circ_id = circ_id
        self.tunnel = tunnel
        self.state = CircuitState.BUILDING
        self.hops: list[Hop] = []
        self.crypto = OnionCrypto()
        self._handshake: _Handshake | None = None
        self._relay_early_sent = 0
        self._accept_min = sendme_accept_min_version
        self._circwindow = circwindow
        self._header = struct.pack(">IB", circ_id, _CELL_RELAY)
        self._closing = False
        self.cells_received = 0
        self.cells_sent = 0
        # Conflux (prop 329): this circuit's place in its tunnel's set, if any.
        self.conflux: ConfluxSet | None = None
        self.conflux_leg: ConfluxLeg | None = None
        self.last_kh: bytes | None = None  # KH of the last handshake (tor-spec §5.2.2)
        channel.mux.attach(self)

    # -- what others read ------------------------------------------------------------

    @property
    def hop_count(self) -> int:
        return len(self.hops)

    @property
    def last_hop(self) -> Hop:
        return self.hops[-1]

    @property
    def cc(self) -> Vegas | None:
        """Congestion control with the last hop, if negotiated."""
        return self.hops[-1].cc if self.hops else None

    @property
    def is_usable(self) -> bool:
        """Open and not being torn down: cells may still be sent on it."""
        return self.state is CircuitState.OPEN and not self._closing

    # -- building --------------------------------------------------------------------

    def send_create_fast(self) -> None:
        x, payload = handshake.fast_client_create()
        self._handshake = _CreateFast(x)
        self._out(encode_cell(self.circ_id, CellCommand.CREATE_FAST, encode_create_fast(payload)))

    def send_create2(self, rsa_id: bytes, ntor_key: bytes) -> None:
        state, onionskin = handshake.ntor_client_create(rsa_id, ntor_key)
        self._handshake = _Ntor("created2", state)
        create2 = encode_create2(handshake.NTOR_HTYPE, onionskin)
        self._out(encode_cell(self.circ_id, CellCommand.CREATE2, create2))

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
        if self.state is not CircuitState.BUILDING or not self.hops:
            raise RuntimeError("extend on a circuit that is not being built")
        if congestion_control is not None and congestion_control.enabled:
            if ed_id is None:
                raise ValueError("ntor v3 needs the relay's Ed25519 identity")
            state3, onionskin = handshake.ntor_v3_client_create(
                ed_id, ntor_key, cc_request_message()
            )
            self._handshake = _NtorV3("extended2", state3, congestion_control)
            body = encode_extend2(link_specifiers, handshake.NTOR_V3_HTYPE, onionskin)
        else:
            state, onionskin = handshake.ntor_client_create(rsa_id, ntor_key)
            self._handshake = _Ntor("extended2", state)
            body = encode_extend2(link_specifiers, handshake.NTOR_HTYPE, onionskin)
        self.seal(RelayCommand.EXTEND2, 0, body, early=True)

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
        cc = None
        if congestion_control is not None and sendme_inc > 0:
            cc = Vegas(congestion_control, sendme_inc)
        self._add_hop(HopCrypto(df, db, kf, kb, hs=True), cc)
        self.tunnel.hop_added(self, congestion_control if cc is not None else None)

    def mark_open(self) -> None:
        state = _OPENS.get(self.state)
        if state is not None:
            self.state = state

    def reopen_for_extension(self) -> None:
        """An open circuit gets more hops: EXTEND2 is allowed again until `mark_open`."""
        state = _EXTENDS.get(self.state)
        if state is None:
            raise ValueError(f"cannot extend a circuit that is {self.state.value}")
        self.state = state

    def _add_hop(self, crypto: HopCrypto, cc: Vegas | None) -> None:
        self.crypto.add_hop(crypto)
        self.hops.append(Hop(crypto, circwindow=self._circwindow, cc=cc))

    def _complete_handshake(self, reply_kind: str, reply: Any) -> None:
        """``reply_kind`` names the cell that answered: it must be the one we wait for."""
        pending, self._handshake = self._handshake, None
        if pending is None or pending.reply != reply_kind:
            raise RemoteProtocolError(f"unexpected {reply_kind.upper()} reply")
        keys, sendme_inc = pending.complete(reply)
        cc = None
        params = pending.params if isinstance(pending, _NtorV3) else None
        if params is not None and sendme_inc is not None:
            cc = Vegas(params, sendme_inc)
        self._add_hop(HopCrypto(keys.df, keys.db, keys.kf, keys.kb), cc)
        self.last_kh = keys.kh  # an onion service's ESTABLISH_INTRO authenticates with it
        self.tunnel.hop_added(self, params if cc is not None else None)

    # -- what arrives ----------------------------------------------------------------

    def handle_cell(self, command: int, payload: bytes | bytearray) -> None:
        """A cell for this circuit arrived on the channel (a bytearray is ours now)."""
        if self.state is CircuitState.CLOSED:
            return
        if command == _CELL_RELAY:
            self.handle_relay_cells(payload if type(payload) is bytearray else bytearray(payload))
            return
        payload = bytes(payload)  # the codecs below take bytes; these cells are rare
        try:
            if command == CellCommand.DESTROY:
                reason = decode_destroy(payload)
                self.closed(reason, "circuit destroyed by relay", remote=True)
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
        """RELAY payloads for this circuit, back to back, in arrival order.

        Every onion layer comes off the whole run in one cipher call per hop; then the
        cells are taken in order - stretches of full DATA cells for one stream whole,
        everything else one by one - exactly as they would be singly.
        """
        if self.state is CircuitState.CLOSED:
            return
        tunnel = self.tunnel
        try:
            self._handle_run(block)
        except RemoteProtocolError as exc:
            self.destroy(1, f"protocol violation: {exc}")
        finally:
            tunnel.end_of_run()

    def _handle_run(self, block: bytearray) -> None:
        crypto = self.crypto
        n_hops = len(crypto.hops)
        hop_of, digests, block = crypto.decrypt_inbound_run(block)
        count = len(hop_of)
        if not n_hops:
            for i in range(count):
                if not self._relay_cell(block, i, -1, digests, 0):
                    return
            return
        last = n_hops - 1
        last_hop = self.hops[last]
        header = RELAY_HEADER_SHORT.unpack_from
        data_cmd, body_len = _CMD_DATA, RELAY_BODY_LEN
        tunnel = self.tunnel
        mv = memoryview(block)
        i = 0
        while i < count:
            if hop_of[i] == last:
                o = i * body_len
                command, stream_id, length = header(block, o)
                if command == data_cmd and length <= RELAY_DATA_LEN:
                    m = 1
                    if length == RELAY_DATA_LEN and count - i > 1:
                        m = full_data_stretch(
                            block, o, min(count - i, MAX_STRETCH), hop_of, i, last
                        )
                    if m == 1:
                        if last_hop.take_data_cell():
                            self._send_sendme(last, digests[i])
                        pieces: list[Any] = [mv[o + DATA_OFFSET : o + DATA_OFFSET + length]]
                    else:
                        for j in last_hop.take_data_cells(i, m):
                            self._send_sendme(last, digests[j])
                        pieces = data_views(mv, o, m)
                    self.cells_received += m
                    tunnel.data(self, stream_id, pieces, m)
                    if self.state is CircuitState.CLOSED:
                        return
                    i += m
                    continue
            if not self._relay_cell(block, i, hop_of[i], digests, n_hops):
                return
            if len(crypto.hops) != n_hops:
                # EXTENDED2 added a hop: the rest of the run, each the careful way.
                for k in range(i + 1, count):
                    if not self._relay_cell(block, k, hop_of[k], digests, n_hops):
                        return
                return
            i += 1

    def _relay_cell(
        self, block: bytearray, i: int, hop: int, digests: list[Any], n_hops: int
    ) -> bool:
        """Cell ``i`` of a run, the general way; False once the circuit is closed."""
        o = i * RELAY_BODY_LEN
        body = block[o : o + RELAY_BODY_LEN]
        if hop < 0:
            # No hop we had when the run arrived knew this cell.  A hop added since
            # (EXTENDED2 earlier in the run) gets its turn, as it would have cell by
            # cell; otherwise this raises.
            hop, body = self.crypto.decrypt_inbound(body, first_hop=n_hops)
            digest = self.crypto.hops[hop].bwd_digest.digest()
        else:
            digest = digests[i]
        self._relay_message(hop, body, digest)
        return self.state is not CircuitState.CLOSED

    def _relay_message(self, hop: int, body: bytearray, digest: bytes) -> None:
        """One decrypted relay cell from ``hop``; ``digest``: that hop's running digest
        after it (a SENDME quotes its first 20 bytes)."""
        command, _rec, stream_id, _digest, length = RELAY_HEADER.unpack_from(body)
        if length > RELAY_DATA_LEN:
            raise RemoteProtocolError(f"relay cell length {length} > {RELAY_DATA_LEN}")
        self.cells_received += 1
        last = len(self.hops) - 1
        if command == _CMD_DATA:
            if self.hops[hop].take_data_cell():
                self._send_sendme(hop, digest)
            if hop == last:
                self.tunnel.data(self, stream_id, [body[DATA_OFFSET : DATA_OFFSET + length]], 1)
            return
        data = bytes(body[DATA_OFFSET : DATA_OFFSET + length])
        if stream_id and (command in MULTIPLEXED or command == _CMD_SENDME):
            if hop != last:
                raise RemoteProtocolError("stream cell from a hop that is not the last")
            self.tunnel.stream_message(self, command, stream_id, data)
        elif stream_id == 0:
            self._circuit_message(command, data, hop)
        # A recognised cell with an unknown command is dropped (tor-spec §6.1).

    def _circuit_message(self, command: int, data: bytes, hop: int) -> None:
        if command == _CMD_SENDME:
            version, digest = decode_sendme(data)
            self.hops[hop].sendme_received(
                version, digest, self._accept_min, self.tunnel.now_usec()
            )
            self.tunnel.window_opened(self)
        elif command == RelayCommand.EXTENDED2:
            if self._handshake is None:
                raise RemoteProtocolError("EXTENDED2 without an EXTEND2")
            self._complete_handshake("extended2", decode_extended2(data))
        elif command == RelayCommand.TRUNCATED:
            reason = decode_truncated(data)
            # A partial circuit is of no use to us: tear it all down (as C tor).
            self.destroy(reason, "circuit truncated by relay", remote=True)
        elif command == RelayCommand.DROP:
            pass
        elif command in MULTIPLEXED:
            # (Stream 0: C tor drops these unsequenced; DATA never gets here.)
            pass
        elif RelayCommand.CONFLUX_LINK <= command <= RelayCommand.CONFLUX_SWITCH:
            if hop != len(self.hops) - 1:
                raise RemoteProtocolError("conflux message from a hop that is not the exit")
            self.tunnel.conflux_message(self, command, data)
        else:
            self.tunnel.control_cell(self, command, data, hop)

    def _send_sendme(self, hop: int, digest: bytes) -> None:
        # The digest of the cell just absorbed authenticates this SENDME (every 100
        # cells, or every sendme_inc with congestion control).
        self.seal(_CMD_SENDME, 0, encode_sendme_v1(digest[:20]), hop=hop)

    # -- what we send ----------------------------------------------------------------

    def seal(
        self,
        command: int,
        stream_id: int,
        data: bytes = b"",
        *,
        hop: int = -1,
        early: bool = False,
    ) -> bytes:
        """Seal one relay cell for ``hop`` and queue it; returns the hop's running
        digest after it (what a SENDME answering it quotes)."""
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
        body = bytearray(RELAY_HEADER.pack(command, 0, stream_id, 0, length))
        body += data
        pad = RELAY_DATA_LEN - length
        if pad > 4:
            body += b"\0\0\0\0"
            body += _padding.take(pad - 4)
        elif pad:
            body += bytes(pad)
        if hop < 0:
            hop += len(self.hops)
        payload, digest = self.crypto.encrypt_outbound(body, hop)
        cell = bytearray(header)
        cell += payload
        self._out(cell)
        self.cells_sent += 1
        return digest

    def seal_data(self, stream: Stream, max_cells: int) -> int:
        """Up to ``max_cells`` DATA cells from ``stream``'s send buffer to the last hop;
        the caller checked that both windows allow that many.  Full cells go in one
        batch (each layer encrypts the batch in one call); a short rest as one padded
        cell.  Returns the cells sealed."""
        buf = stream.send_buffer
        full = min(len(buf) // RELAY_DATA_LEN, max_cells)
        sealed = 0
        if full:
            self._seal_full_data_cells(stream, full)
            sealed = full
        if sealed < max_cells and 0 < len(buf) < RELAY_DATA_LEN:
            hop = self.hops[-1]
            digest = self.seal(_CMD_DATA, stream.stream_id, bytes(buf))
            recorded = hop.note_data_cell(digest)
            hop.note_data_cells_sent(1, int(recorded), self.tunnel.now_usec())
            if stream.flow is not None:
                stream.flow.bytes_sent += len(buf)
            buf.clear()
            sealed += 1
        stream.package_window -= sealed
        return sealed

    def _seal_full_data_cells(self, stream: Stream, count: int) -> None:
        """The upload hot path: what `seal` does per cell, in two passes.  First each
        body is built in one scratch buffer and absorbed into the last hop's digest;
        then every layer encrypts the whole batch in one cipher call, which gives the
        same bytes as one call per cell since AES-CTR keystreams carry over."""
        hop_index = len(self.hops) - 1
        hop = self.hops[hop_index]
        digest = self.crypto.outbound_digest(hop_index)
        prefix = RELAY_HEADER.pack(_CMD_DATA, 0, stream.stream_id, 0, RELAY_DATA_LEN)
        body = bytearray(RELAY_BODY_LEN)
        block = bytearray()
        recorded = 0
        expected = hop.expected_sendmes
        inc = hop.sendme_inc
        next_recorded = hop.first_recorded()
        src = memoryview(stream.send_buffer)
        pos = 0
        try:
            for k in range(count):
                body[:11] = prefix
                body[11:] = src[pos : pos + RELAY_DATA_LEN]
                pos += RELAY_DATA_LEN
                digest.update(body)
                full = digest.digest()
                body[5:9] = full[:4]
                block += body
                if k == next_recorded:  # a SENDME will quote this cell's digest
                    expected.append(full[:20])
                    recorded += 1
                    next_recorded += inc
        finally:
            src.release()
        hop.advance(count)
        del stream.send_buffer[:pos]
        block = self.crypto.seal_layers(block, hop_index)
        header = self._header
        cells = bytearray()
        view = memoryview(block)
        for o in range(0, len(block), RELAY_BODY_LEN):
            cells += header
            cells += view[o : o + RELAY_BODY_LEN]
        view.release()
        self._out(cells)
        hop.note_data_cells_sent(count, recorded, self.tunnel.now_usec())
        if stream.flow is not None:
            stream.flow.bytes_sent += count * RELAY_DATA_LEN
        self.cells_sent += count

    def _out(self, cells: bytes | bytearray) -> None:
        self.channel.mux.queue(self, cells, self.channel.now)
        self.channel.wants_flush()

    # -- teardown --------------------------------------------------------------------

    def destroy(
        self, reason: int = 0, message: str = "closed locally", *, remote: bool = False
    ) -> None:
        """Close the circuit: DESTROY to the first hop; the tunnel learns why."""
        if self.state is CircuitState.CLOSED:
            return
        self.channel.queue_destroy(self)
        self.closed(reason, message, remote=remote)

    def closed(self, reason: int, message: str, *, remote: bool) -> None:
        """The circuit is gone (DESTROY, TRUNCATED, the channel closed, or us)."""
        if self.state is CircuitState.CLOSED:
            return
        self._closing = True
        self.state = CircuitState.CLOSED
        self._handshake = None
        self.channel.forget_circuit(self)
        self.tunnel.circuit_closed(self, reason, message, remote)
