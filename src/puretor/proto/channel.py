"""A channel (link connection) to one relay, sans-I/O (tor-spec §2–§4).

The caller owns the TLS socket: it passes received bytes to `receive_data`,
writes `outbuf` out (and clears it), and tells us the relay's TLS certificate.
We run the in-protocol handshake as a non-authenticating initiator — VERSIONS,
then CERTS/AUTH_CHALLENGE/NETINFO from the relay, then our NETINFO — and then
route every cell to its circuit.
"""

from __future__ import annotations

import enum
import secrets
import struct
from collections.abc import Callable
from itertools import groupby

from puretor.errors import CertsError, ChannelError, ProtocolError, RemoteProtocolError
from puretor.proto.cells import (
    CellCommand,
    decode_certs,
    decode_netinfo,
    decode_versions,
    encode_cell,
    encode_netinfo,
    encode_versions_cell,
)
from puretor.proto.certs import RelayIdentity, validate_relay_certs
from puretor.proto.circuit import Circuit

LINK_PROTOCOLS = (4, 5)  # 4-byte circuit IDs; we never speak 1-3
_HDR4 = struct.Struct(">IB")
_HDR2 = struct.Struct(">HB")
_LEN = struct.Struct(">H")
_FIXED_CELL = 514
_RELAY_BODY = 509
_RELAY = CellCommand.RELAY.value
_CIRC_ID = struct.Struct(">I")


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


MAX_VAR_CELL_PAYLOAD = 65535


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
    ) -> None:
        self.peer_address = peer_address
        self.expected_rsa_id = expected_rsa_id
        self.expected_ed_id = expected_ed_id
        self.state = ChannelState.WAITING_VERSIONS
        self.link_protocol = 0
        self.identity: RelayIdentity | None = None
        self.tls_cert_der: bytes | None = None
        self.relay_time: int | None = None
        self.outbuf = bytearray()
        self.circuits: dict[int, Circuit] = {}
        self.close_reason: str | None = None
        self._inbuf = bytearray()
        self._certs: list[tuple[int, bytes]] | None = None
        # Set by the owner:
        self.on_open: Callable[[], None] = lambda: None
        self.on_closed: Callable[[str], None] = lambda reason: None
        self.on_flush_needed: Callable[[], None] = lambda: None

    # -- owner API -------------------------------------------------------------

    def start(self) -> None:
        """Queue our VERSIONS cell: the first thing an initiator sends."""
        self.outbuf += encode_versions_cell(LINK_PROTOCOLS)
        self.on_flush_needed()

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes from the TLS connection; may open the channel or close it."""
        if self.state is ChannelState.CLOSED:
            return
        self._inbuf += data
        try:
            self._parse(now)
        except (ProtocolError, ValueError) as exc:
            self.close(f"{type(exc).__name__}: {exc}")

    def take_output(self) -> bytes:
        out = bytes(self.outbuf)
        self.outbuf.clear()
        return out

    def new_circuit(self, **kwargs: int) -> Circuit:
        if self.state is not ChannelState.OPEN:
            # It may have closed since the caller got it: a channel failure, retryable.
            raise ChannelError(f"channel is not open ({self.close_reason or self.state.value})")
        while True:
            circ_id = 0x80000000 | secrets.randbits(31)
            if circ_id not in self.circuits and circ_id != 0x80000000:
                break
        circ = Circuit(self, circ_id, **kwargs)
        self.circuits[circ_id] = circ
        return circ

    def close(self, reason: str) -> None:
        """Tear the channel down: every circuit on it is closed."""
        if self.state is ChannelState.CLOSED:
            return
        self.state = ChannelState.CLOSED
        self.close_reason = reason
        for circ in list(self.circuits.values()):
            circ._closed(8, f"channel closed: {reason}", remote=True)  # 8 = CHANNEL_CLOSED
        self.circuits.clear()
        self.on_closed(reason)

    # -- used by circuits --------------------------------------------------------

    def _queue_cell(self, circ_id: int, command: int, payload: bytes) -> None:
        self.outbuf += encode_cell(circ_id, command, payload)
        self.on_flush_needed()

    def _wants_flush(self) -> None:
        self.on_flush_needed()

    def _forget_circuit(self, circ_id: int) -> None:
        self.circuits.pop(circ_id, None)

    # -- parsing ---------------------------------------------------------------

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
        self.outbuf += encode_cell(0, CellCommand.NETINFO, encode_netinfo(self.peer_address))
        self.state = ChannelState.OPEN
        self.on_flush_needed()
        self.on_open()
