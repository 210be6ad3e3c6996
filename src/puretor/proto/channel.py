"""A channel (link connection) to one relay, sans-I/O (tor-spec §2-§4).

The owner holds the TLS connection: it feeds what it reads to `receive_data`, writes
what `data_to_send` returns, tells us the relay's TLS certificate, and after each call
drains the shared `EventQueue` and flushes the channels in the shared flush set.  We
run the in-protocol handshake as a non-authenticating initiator - VERSIONS, then
CERTS/AUTH_CHALLENGE/NETINFO from the relay, then our NETINFO - and then route every
cell to its circuit.  Every cell we send leaves through the `CircuitMux`.

``now`` is seconds on the wall clock (``time.time()``): certificates are checked
against it, and congestion control and deadlines use its differences.
"""

from __future__ import annotations

import enum
import secrets
import struct
from itertools import groupby
from typing import Any

from puretor.errors import CertsError, ChannelError, ProtocolError, RemoteProtocolError
from puretor.proto.cells import (
    CellCommand,
    decode_certs,
    decode_netinfo,
    decode_versions,
    encode_cell,
    encode_destroy,
    encode_netinfo,
    encode_versions_cell,
)
from puretor.proto.certs import RelayIdentity, validate_relay_certs
from puretor.proto.circuit import Circuit
from puretor.proto.circuitmux import DEFAULT_HALFLIFE, CircuitMux
from puretor.proto.events import ChannelClosed, ChannelOpened, EventQueue
from puretor.proto.memory import QueueBudget
from puretor.proto.tunnel import Tunnel

LINK_PROTOCOLS = (4, 5)  # 4-byte circuit IDs; we never speak 1-3
_HDR4 = struct.Struct(">IB")
_HDR2 = struct.Struct(">HB")
_LEN = struct.Struct(">H")
_FIXED_CELL = 514
_RELAY_BODY = 509
_RELAY = CellCommand.RELAY.value
_CIRC_ID = struct.Struct(">I")
MAX_VAR_CELL_PAYLOAD = 65535


def _group_runs(
    view: memoryview, buf: bytearray, pos: int, count: int, runs: dict[int, bytearray]
) -> bool:
    """Append the bodies of the ``count`` RELAY cells at ``pos`` to their circuits' runs,
    each circuit's cells in arrival order; False (nothing done) if one is for circuit 0.

    The circuit IDs are gathered with four strided slices and sorted stably in C, so
    the per-cell work left in Python is one slice each.
    """
    stop = pos + count * _FIXED_CELL
    ids = bytearray(4 * count)
    for j in range(4):
        ids[j::4] = buf[pos + j : stop : _FIXED_CELL]
    keys = memoryview(ids).cast("I").tolist()  # native order: only compared, never read
    if 0 in keys:
        return False
    key = keys.__getitem__
    for _key, group in groupby(sorted(range(count), key=key), key):
        offsets = [pos + k * _FIXED_CELL for k in group]
        (circ_id,) = _CIRC_ID.unpack_from(buf, offsets[0])
        bodies = [view[o + 5 : o + _FIXED_CELL] for o in offsets]
        run = runs.get(circ_id)
        if run is None:
            runs[circ_id] = bytearray().join(bodies)
        else:
            run += b"".join(bodies)
        del bodies
    return True


class ChannelState(enum.Enum):
    WAITING_VERSIONS = "waiting_versions"
    WAITING_CERTS = "waiting_certs"  # ... and AUTH_CHALLENGE, NETINFO
    OPEN = "open"
    CLOSED = "closed"


class Channel:
    """The client end of a link connection.  Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        peer_address: str,
        expected_rsa_id: bytes | None,
        expected_ed_id: bytes | None = None,
        events: EventQueue | None = None,
        flush_wanted: set[Channel] | None = None,
        priority_halflife: float = DEFAULT_HALFLIFE,
        queue_budget: QueueBudget | None = None,
    ) -> None:
        self.peer_address = peer_address
        self.expected_rsa_id = expected_rsa_id
        self.expected_ed_id = expected_ed_id
        self.state = ChannelState.WAITING_VERSIONS
        self.link_protocol = 0
        self.identity: RelayIdentity | None = None
        self.tls_cert_der: bytes | None = None
        self.relay_time: int | None = None
        self.circuits: dict[int, Circuit] = {}
        self.close_reason: str | None = None
        self.events = events if events is not None else EventQueue()
        # Channels with something to send: the owner flushes them after each call.
        self.flush_wanted = flush_wanted if flush_wanted is not None else set()
        # What this client holds queued, shared by its channels (MaxMemInQueues).
        self.queue_budget = queue_budget if queue_budget is not None else QueueBudget()
        self.mux = CircuitMux(priority_halflife, self.queue_budget)
        self.now = 0.0  # the latest `now` an entry point was given
        self.owner: Any = None  # whatever the asyncio layer attaches (events name us)
        self._inbuf = bytearray()
        self._certs: list[tuple[int, bytes]] | None = None
        self._settle: dict[Tunnel, None] = {}

    # -- owner API -------------------------------------------------------------------

    def start(self, now: float = 0.0) -> None:
        """Queue our VERSIONS cell: the first thing an initiator sends."""
        self.now = now or self.now
        self.mux.queue_channel_cell(encode_versions_cell(LINK_PROTOCOLS))
        self.wants_flush()

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes from the TLS connection; may open the channel or close it."""
        if self.state is ChannelState.CLOSED:
            return
        self.now = now
        self._inbuf += data
        try:
            self._parse(now)
        except (ProtocolError, ValueError) as exc:
            self.close(f"{type(exc).__name__}: {exc}")

    @property
    def has_output(self) -> bool:
        return self.mux.has_output or bool(self._settle)

    def data_to_send(self, now: float, max_cells: int | None = None) -> bytes:
        """What goes on the wire next (at most ``max_cells`` cells), in the order the
        `CircuitMux` picks."""
        self.now = now
        self.flush_wanted.discard(self)
        if self._settle:
            tunnels = list(self._settle)
            self._settle.clear()
            for tunnel in tunnels:
                tunnel.settle()
        return self.mux.take(now, max_cells)

    def take_output(self) -> bytes:
        """Everything there is to send (tests and tools)."""
        return self.data_to_send(self.now)

    def new_tunnel(self, *, clock: Any = None, **circuit_kwargs: int) -> Tunnel:
        """A tunnel with one new circuit on this channel, to build."""
        if self.state is not ChannelState.OPEN:
            # It may have closed since the caller got it: a channel failure, retryable.
            raise ChannelError(f"channel is not open ({self.close_reason or self.state.value})")
        while True:
            circ_id = 0x80000000 | secrets.randbits(31)
            if circ_id not in self.circuits and circ_id != 0x80000000:
                break
        tunnel = Tunnel(self.events, clock=clock or self.clock, queue_budget=self.queue_budget)
        circuit = Circuit(self, circ_id, tunnel, **circuit_kwargs)
        tunnel.circuits.append(circuit)
        self.circuits[circ_id] = circuit
        return tunnel

    def clock(self) -> float:
        """The latest `now` given to this channel (what its tunnels time RTTs with)."""
        return self.now

    def close(self, reason: str) -> None:
        """Tear the channel down: every circuit on it is closed."""
        if self.state is ChannelState.CLOSED:
            return
        self.state = ChannelState.CLOSED
        self.close_reason = reason
        for circ in list(self.circuits.values()):
            circ.closed(8, f"channel closed: {reason}", remote=True)  # 8 = CHANNEL_CLOSED
        self.circuits.clear()
        self.events.append(ChannelClosed(self, reason))

    # -- deadlines of the tunnels on this channel -----------------------------------

    def next_deadline(self) -> float | None:
        found = [d for c in self.circuits.values() if (d := c.tunnel.next_deadline()) is not None]
        return min(found) if found else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        for tunnel in {c.tunnel for c in self.circuits.values()}:
            tunnel.handle_timer(now)

    # -- used by circuits ------------------------------------------------------------

    def wants_flush(self) -> None:
        self.flush_wanted.add(self)

    def settle_later(self, tunnel: Tunnel) -> None:
        """``tunnel`` has something to decide just before our next output (`Tunnel.settle`)."""
        self._settle[tunnel] = None
        self.wants_flush()

    def queue_destroy(self, circuit: Circuit) -> None:
        """DESTROY after whatever the circuit has queued (its last END cells)."""
        self.mux.detach(circuit, keep_queued=True)
        self.mux.queue_channel_cell(
            encode_cell(circuit.circ_id, CellCommand.DESTROY, encode_destroy(0))
        )
        self.wants_flush()

    def forget_circuit(self, circuit: Circuit) -> None:
        if self.circuits.get(circuit.circ_id) is circuit:
            del self.circuits[circuit.circ_id]
        self.mux.detach(circuit)

    # -- parsing ---------------------------------------------------------------------

    def _parse(self, now: float) -> None:
        buf = self._inbuf
        if self.state is ChannelState.WAITING_VERSIONS:
            # The relay's VERSIONS uses the old 2-byte circuit ID framing.
            if len(buf) < 5:
                return
            _circ, cmd = _HDR2.unpack_from(buf, 0)
            if cmd != CellCommand.VERSIONS:
                raise RemoteProtocolError(f"expected VERSIONS, got cell command {cmd}")
            (length,) = _LEN.unpack_from(buf, 3)
            if len(buf) < 5 + length:
                return
            versions = decode_versions(bytes(buf[5 : 5 + length]))
            del buf[: 5 + length]
            common = set(versions) & set(LINK_PROTOCOLS)
            if not common:
                raise RemoteProtocolError(f"no common link protocol (relay offers {versions})")
            self.link_protocol = max(common)
            self.state = ChannelState.WAITING_CERTS
        n = len(buf)
        pos = 0
        view = memoryview(buf)
        # RELAY cells are gathered per circuit (keeping each circuit's order) and
        # handed over as one run per circuit, so each onion layer comes off all of
        # them in one cipher call even when the guard interleaves many circuits.
        runs: dict[int, bytearray] = {}
        # Once a stretch turns out to mix circuits or commands, cells are taken one
        # at a time for the rest of this call (the stretch check costs O(stretch)).
        mixed = False
        try:
            while self.state is not ChannelState.CLOSED and n - pos >= 5:
                circ_id, cmd = _HDR4.unpack_from(buf, pos)
                if cmd == _RELAY and circ_id:
                    count = (n - pos) // _FIXED_CELL
                    if not count:
                        break
                    run = runs.get(circ_id)
                    if run is None:
                        run = runs[circ_id] = bytearray()
                    if count > 1 and not mixed:
                        # Usually every whole cell in the buffer is RELAY on this one
                        # circuit: check all their headers with five strided compares.
                        stop = pos + count * _FIXED_CELL
                        header = bytes(view[pos : pos + 5])
                        if all(
                            buf[pos + j : stop : _FIXED_CELL] == header[j : j + 1] * count
                            for j in range(5)
                        ):
                            bodies = [
                                view[p : p + _RELAY_BODY] for p in range(pos + 5, stop, _FIXED_CELL)
                            ]
                            if run:
                                run += b"".join(bodies)
                            else:  # the usual case: one copy, straight into the run
                                runs[circ_id] = bytearray().join(bodies)
                            del bodies  # its views of `buf` would block the resize below
                            pos = stop
                            continue
                        # Guards interleave circuits cell by cell: if every cell is RELAY,
                        # sort them into their circuits' runs at once.
                        if buf[pos + 4 : stop : _FIXED_CELL].count(_RELAY) == count and (
                            _group_runs(view, buf, pos, count, runs)
                        ):
                            pos = stop
                            continue
                        mixed = True
                    end = pos + _FIXED_CELL
                    run += view[pos + 5 : end]
                    pos = end
                    continue
                payload: bytes | bytearray
                if cmd == 7 or cmd >= 128:
                    if n - pos < 7:
                        break
                    (length,) = _LEN.unpack_from(buf, pos + 5)
                    end = pos + 7 + length
                    if end > n:
                        break
                    payload = bytes(view[pos + 7 : end])
                else:
                    end = pos + _FIXED_CELL
                    if end > n:
                        break
                    payload = buf[pos + 5 : end]
                pos = end
                # Anything else may change a circuit's state: deliver what came before it.
                if runs:
                    self._deliver_runs(runs)
                if circ_id:
                    circ = self.circuits.get(circ_id)
                    if circ is not None:
                        circ.handle_cell(cmd, payload)
                else:
                    self._handle_channel_cell(cmd, bytes(payload), now)
            if runs:
                self._deliver_runs(runs)
        finally:
            view.release()
            del buf[:pos]

    def _deliver_runs(self, runs: dict[int, bytearray]) -> None:
        for circ_id, run in runs.items():
            circ = self.circuits.get(circ_id)
            # Cells for unknown circuits (e.g. ones we just destroyed) are dropped.
            if circ is not None and self.state is not ChannelState.CLOSED:
                circ.handle_relay_cells(run)
        runs.clear()

    def _handle_channel_cell(self, cmd: int, payload: bytes, now: float) -> None:
        if cmd in (CellCommand.PADDING, CellCommand.VPADDING):
            return
        if self.state is ChannelState.WAITING_CERTS:
            if cmd == CellCommand.CERTS:
                if self._certs is not None:
                    raise RemoteProtocolError("second CERTS cell")
                self._certs = decode_certs(payload)
            elif cmd == CellCommand.AUTH_CHALLENGE:
                pass  # we never authenticate as a client
            elif cmd == CellCommand.NETINFO:
                self._finish_handshake(payload, now)
            else:
                raise RemoteProtocolError(f"unexpected cell {cmd} during the handshake")
            return
        if cmd == CellCommand.PADDING_NEGOTIATE:
            # padding-spec §2.5: only clients negotiate padding.
            raise RemoteProtocolError("relay sent PADDING_NEGOTIATE to a client")
        # VERSIONS/CERTS/NETINFO after the handshake are ignored.

    def _finish_handshake(self, payload: bytes, now: float) -> None:
        if self._certs is None:
            raise RemoteProtocolError("NETINFO before CERTS")
        if self.tls_cert_der is None:
            raise CertsError("no TLS certificate to bind the CERTS cell to")
        self.identity = validate_relay_certs(
            self._certs, self.tls_cert_der, now, self.expected_rsa_id, self.expected_ed_id
        )
        netinfo = decode_netinfo(payload)
        self.relay_time = netinfo.timestamp
        self.mux.queue_channel_cell(
            encode_cell(0, CellCommand.NETINFO, encode_netinfo(self.peer_address))
        )
        self.state = ChannelState.OPEN
        self.wants_flush()
        self.events.append(ChannelOpened(self))
