"""Conflux (proposal 329): one tunnel over several circuits to the same exit, sans-I/O.

A `ConfluxSet` links circuits ("legs") that end at the same exit.  Each leg keeps its
own relay crypto, circuit SENDMEs and congestion control (prop 329 §2.5: SENDMEs are
counted as cells arrive, whatever their order); what the set adds is the sequencing
of the *multiplexed* relay commands (BEGIN, DATA, END, CONNECTED, RESOLVE(D),
XON/XOFF) across legs:

* every multiplexed cell has an implicit absolute sequence number; a leg counts them
  from where its last SWITCH put it (``last_seq_recv``), so the receiver puts cells
  from several legs back in order (per leg they always arrive in order, so a FIFO per
  leg is the whole out-of-order queue: the next cell is at the head of one of them);
* the sender picks a leg per cell (C tor's MinRTT / LowRTT schedulers) and, when it
  changes legs, first sends SWITCH carrying how far the new leg's count must jump.

Streams live on one leg's `Circuit` (the set's ``owner``, the handle applications
see); the other legs hand it their in-order cells and it sends through whichever leg
the scheduler picks.  Like C tor, a linked set does not survive the loss of a leg:
closing one closes them all (no resumption).

The wire formats (C tor ``conflux.trunnel``): LINK and LINKED carry version 1, a
32-byte nonce, the last sequence numbers sent and received (u64) and a desired UX
byte; LINKED_ACK is empty; SWITCH is a u32 relative sequence number.
"""

from __future__ import annotations

import enum
import os
import struct
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from puretor.errors import RemoteProtocolError
from puretor.proto.memory import QueueBudget
from puretor.proto.relaymsg import RelayCommand

if TYPE_CHECKING:
    from puretor.proto.circuit import Circuit

__all__ = [
    "MULTIPLEXED",
    "UX_BY_NAME",
    "ConfluxLeg",
    "ConfluxSet",
    "DesiredUx",
    "LegState",
    "LinkPayload",
    "decode_switch",
    "encode_switch",
]

NONCE_LEN = 32
LINK_VERSION = 1
_LINK = struct.Struct(">B32sQQB")  # version, nonce, last_seqno_sent, last_seqno_recv, ux
_SWITCH = struct.Struct(">I")


class DesiredUx(enum.IntEnum):
    """What the sender of LINK asks of the other end's scheduler (prop 329 §2.2)."""

    NO_OPINION = 0
    MIN_LATENCY = 1
    LOW_MEM_LATENCY = 2
    HIGH_THROUGHPUT = 3
    LOW_MEM_THROUGHPUT = 4


# torrc ConfluxClientUX values (C tor config.c).
UX_BY_NAME = {
    "throughput": DesiredUx.HIGH_THROUGHPUT,
    "latency": DesiredUx.MIN_LATENCY,
    "throughput_lowmem": DesiredUx.LOW_MEM_THROUGHPUT,
    "latency_lowmem": DesiredUx.LOW_MEM_LATENCY,
}

# Relay commands that count towards the sequence numbers and are reordered (C tor's
# conflux_should_multiplex): what must stay ordered with respect to stream data.
MULTIPLEXED = frozenset(
    int(c)
    for c in (
        RelayCommand.BEGIN,
        RelayCommand.DATA,
        RelayCommand.END,
        RelayCommand.CONNECTED,
        RelayCommand.RESOLVE,
        RelayCommand.RESOLVED,
        RelayCommand.XOFF,
        RelayCommand.XON,
    )
)
# Of those, the ones C tor drops before sequencing when they carry stream id 0.
NEEDS_STREAM = frozenset(
    int(c)
    for c in (
        RelayCommand.BEGIN,
        RelayCommand.CONNECTED,
        RelayCommand.END,
        RelayCommand.RESOLVE,
        RelayCommand.RESOLVED,
    )
)

# Out-of-order cells a set holds at most before it calls the exit hostile.  An honest
# exit is ahead on one leg by at most that leg's congestion window (slow start stops
# at cc_ss_max = 5000 cells by default); 20000 cells is ~10 MB.
MAX_QUEUED_CELLS = 20_000


class LinkPayload(NamedTuple):
    """The body of CONFLUX_LINK / CONFLUX_LINKED (version 1)."""

    nonce: bytes
    last_seqno_sent: int = 0
    last_seqno_recv: int = 0
    desired_ux: int = DesiredUx.HIGH_THROUGHPUT

    def encode(self) -> bytes:
        return _LINK.pack(
            LINK_VERSION, self.nonce, self.last_seqno_sent, self.last_seqno_recv, self.desired_ux
        )

    @classmethod
    def decode(cls, data: bytes) -> LinkPayload:
        if not data:
            raise RemoteProtocolError("empty conflux link message")
        if data[0] != LINK_VERSION:
            raise RemoteProtocolError(f"conflux link version {data[0]} is not supported")
        if len(data) < _LINK.size:
            raise RemoteProtocolError(f"conflux link message of {len(data)} bytes is truncated")
        _version, nonce, sent, recv, ux = _LINK.unpack_from(data)
        if ux not in DesiredUx._value2member_map_:
            raise RemoteProtocolError(f"conflux link asks for unknown UX {ux}")
        return cls(nonce, sent, recv, ux)


def encode_switch(relative_seq: int) -> bytes:
    if not 0 <= relative_seq < 2**32:
        raise ValueError("relative sequence number out of range")
    return _SWITCH.pack(relative_seq)


def decode_switch(data: bytes) -> int:
    if len(data) < _SWITCH.size:
        raise RemoteProtocolError("truncated CONFLUX_SWITCH")
    seq: int = _SWITCH.unpack_from(data)[0]
    return seq


class LegState(enum.Enum):
    NEW = "new"  # part of the set, LINK not sent yet
    LINKING = "linking"  # LINK sent, waiting for LINKED
    LINKED = "linked"
    CLOSED = "closed"


class _Held(NamedTuple):
    """Out-of-order cells: ``cells`` multiplexed cells from ``seq`` on (DATA joined)."""

    seq: int
    cells: int
    command: int
    stream_id: int
    data: bytes


class ConfluxLeg:
    """One circuit of a set and its sequence numbers."""

    __slots__ = (
        "circuit",
        "state",
        "link_sent_usec",
        "link_rtt_usec",
        "last_seq_recv",
        "last_seq_sent",
        "held",
        "cells_since_switch",
        "switches_received",
        "cells_received",
        "cells_sent",
    )

    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit
        self.state = LegState.NEW
        self.link_sent_usec = 0
        self.link_rtt_usec = 0  # LINK -> LINKED
        self.last_seq_recv = 0
        self.last_seq_sent = 0
        self.held: deque[_Held] = deque()
        self.cells_since_switch = 0
        self.switches_received = 0
        self.cells_received = 0  # multiplexed cells that arrived on this leg
        self.cells_sent = 0  # multiplexed cells we sent on it

    @property
    def rtt_usec(self) -> int:
        """The leg's current RTT estimate: congestion control's EWMA once it has one
        (C tor updates the leg from every SENDME), else the LINK round trip."""
        cc = self.circuit.cc
        if cc is not None and cc.ewma_rtt_usec:
            return cc.ewma_rtt_usec
        return self.link_rtt_usec

    def can_send(self) -> bool:
        """Room in the congestion window for DATA (C tor circuit_ready_to_send)."""
        cc = self.circuit.cc
        return cc is not None and cc.inflight < cc.cwnd and self.circuit.is_usable


class ConfluxSet:
    """Legs to one exit, linked by a shared nonce, carrying one set of streams."""

    def __init__(
        self,
        *,
        nonce: bytes | None = None,
        desired_ux: int = DesiredUx.HIGH_THROUGHPUT,
        max_queued_cells: int = MAX_QUEUED_CELLS,
    ) -> None:
        self.nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
        if len(self.nonce) != NONCE_LEN:
            raise ValueError("a conflux nonce is 32 bytes")
        self.desired_ux = desired_ux  # what we ask of the exit's scheduler
        self.send_ux = DesiredUx.MIN_LATENCY  # what the exit asked of ours (LINKED)
        self.legs: list[ConfluxLeg] = []
        self.owner: Circuit | None = None  # the leg whose Circuit holds the streams
        self.finalized = False
        self.closed = False
        self.delivered = 0  # absolute sequence number of the last cell handed on
        self.queued_cells = 0
        self.queued_bytes = 0  # of those cells' data, counted against MaxMemInQueues
        self.queued_since = 0.0  # when the queue last went from empty to not
        self.queue_budget: QueueBudget | None = None  # the tunnel's, once it links
        self.max_queued_cells = max_queued_cells
        self.max_queued_seen = 0
        self.current: ConfluxLeg | None = None  # the leg we last sent on
        self.switches_sent = 0

    # -- linking -------------------------------------------------------------------------

    def add_leg(self, circuit: Circuit) -> ConfluxLeg:
        if self.finalized or self.closed:
            raise RuntimeError("legs join a conflux set before it is finalized")
        if circuit.conflux is not None:
            raise RuntimeError("circuit already belongs to a conflux set")
        leg = ConfluxLeg(circuit)
        self.legs.append(leg)
        circuit.conflux = self
        circuit.conflux_leg = leg
        return leg

    def link_message(self, leg: ConfluxLeg, now_usec: int) -> bytes:
        """The CONFLUX_LINK body for ``leg``; the round trip to LINKED is timed from now."""
        if leg.state is not LegState.NEW:
            raise RuntimeError("LINK already sent on this leg")
        leg.state = LegState.LINKING
        leg.link_sent_usec = now_usec
        sent = max((x.last_seq_sent for x in self.legs), default=0)
        return LinkPayload(self.nonce, sent, self.delivered, self.desired_ux).encode()

    def linked(self, leg: ConfluxLeg, data: bytes, now_usec: int) -> None:
        """CONFLUX_LINKED arrived on ``leg`` (prop 329 §4.2.1 checks)."""
        if leg.state is not LegState.LINKING:
            raise RemoteProtocolError("CONFLUX_LINKED on a circuit that did not send LINK")
        payload = LinkPayload.decode(data)
        if payload.nonce != self.nonce:
            raise RemoteProtocolError("CONFLUX_LINKED carries another set's nonce")
        if payload.last_seqno_sent > self.delivered:
            # The exit sent cells on legs we no longer have: data loss (C tor refuses too).
            raise RemoteProtocolError("CONFLUX_LINKED reports data we never received")
        leg.link_rtt_usec = max(1, now_usec - leg.link_sent_usec)
        leg.last_seq_recv = payload.last_seqno_sent
        leg.last_seq_sent = payload.last_seqno_recv
        self.send_ux = DesiredUx(payload.desired_ux)
        leg.state = LegState.LINKED

    def finalize(self) -> Circuit:
        """Every leg still wanted has linked: streams may start.  Returns the owner.

        Legs that never linked are dropped from the set (the caller closes them).
        """
        if self.closed:
            raise RuntimeError("conflux set is closed")
        linked = [leg for leg in self.legs if leg.state is LegState.LINKED]
        if not linked:
            raise RuntimeError("no linked leg to finalize with")
        for leg in self.legs:
            if leg.state is not LegState.LINKED:
                leg.circuit.conflux = None
                leg.circuit.conflux_leg = None
        self.legs = linked
        owner = min(linked, key=lambda x: x.link_rtt_usec).circuit
        self.owner = owner
        self.finalized = True
        return owner

    # -- receiving -----------------------------------------------------------------------

    def switch_received(self, leg: ConfluxLeg, data: bytes) -> None:
        if leg.state is not LegState.LINKED or not self.finalized:
            raise RemoteProtocolError("CONFLUX_SWITCH on a circuit that is not linked")
        # No +1: SWITCH itself is not sequenced; the next multiplexed cell is.
        leg.last_seq_recv += decode_switch(data)
        leg.cells_since_switch = 0
        leg.switches_received += 1

    def arrive(self, leg: ConfluxLeg, cells: int) -> bool:
        """``cells`` multiplexed cells arrived on ``leg``: True if they are next in order
        (and count as handed on), False if the caller must `hold` them."""
        first = leg.last_seq_recv + 1
        leg.last_seq_recv += cells
        leg.cells_since_switch += cells
        leg.cells_received += cells
        if first == self.delivered + 1:
            self.delivered += cells
            return True
        if first <= self.delivered:
            raise RemoteProtocolError(
                f"conflux sequence number {first} already delivered (at {self.delivered})"
            )
        return False

    def hold(
        self,
        leg: ConfluxLeg,
        cells: int,
        command: int,
        stream_id: int,
        data: bytes,
        now: float = 0.0,
    ) -> None:
        """Keep cells that `arrive` said are early until their turn."""
        leg.held.append(_Held(leg.last_seq_recv - cells + 1, cells, command, stream_id, data))
        if not self.queued_cells:
            self.queued_since = now
        self.queued_cells += cells
        self._count_bytes(len(data))
        if self.queued_cells > self.max_queued_seen:
            self.max_queued_seen = self.queued_cells
        if self.queued_cells > self.max_queued_cells:
            raise RemoteProtocolError(
                f"conflux out-of-order queue over {self.max_queued_cells} cells"
            )

    def next_in_order(self) -> _Held | None:
        """The held cells whose turn has come, if any (each leg's queue is in order)."""
        want = self.delivered + 1
        found = None
        for leg in self.legs:
            held = leg.held
            if held:
                seq = held[0].seq
                if seq < want:
                    # Two legs claimed the same sequence numbers: the one held here could
                    # never be delivered (the set would just stall).
                    raise RemoteProtocolError(
                        f"conflux sequence numbers overlap across legs (held {seq}, "
                        f"delivered {self.delivered})"
                    )
                if seq == want:
                    found = leg
        if found is None:
            return None
        entry = found.held.popleft()
        self.delivered += entry.cells
        self.queued_cells -= entry.cells
        self._count_bytes(-len(entry.data))
        return entry

    def _count_bytes(self, delta: int) -> None:
        self.queued_bytes += delta
        budget = self.queue_budget
        if budget is not None:
            budget.add(delta)

    # -- sending -------------------------------------------------------------------------

    def choose_send_leg(self, *, data: bool) -> ConfluxLeg | None:
        """The leg the next multiplexed cell goes on; None: no room for DATA anywhere.

        The exit's LINKED says which UX it wants from our scheduler: C tor exits ask
        for MIN_LATENCY, i.e. MinRTT (only the lowest-RTT leg; wait when it is full);
        HIGH_THROUGHPUT means LowRTT (the lowest-RTT leg that has room).  Cells other
        than DATA are not congestion controlled and stay on the current leg when no
        leg has room (C tor conflux_decide_circ_for_send).
        """
        # (A leg whose circuit is being torn down is out already: its streams' end
        # callbacks may send on the set.)
        legs = [leg for leg in self.legs if leg.state is LegState.LINKED and leg.circuit.is_usable]
        if not legs:
            return None
        if self.send_ux in (DesiredUx.HIGH_THROUGHPUT, DesiredUx.NO_OPINION):
            ready = [leg for leg in legs if leg.can_send()]
            best = min(ready, key=lambda x: x.rtt_usec) if ready else None
        else:
            best = min(legs, key=lambda x: x.rtt_usec)
            if not best.can_send():
                best = None
        if best is None and not data:
            current = self.current
            if current is not None and current in legs:
                return current
            return min(legs, key=lambda x: x.rtt_usec)
        return best

    def switch_to(self, leg: ConfluxLeg) -> int:
        """Make ``leg`` the sending leg; returns the SWITCH to send on it first (0: none).

        The new leg's count jumps to the highest ``last_seq_sent`` of the set (the one
        of the leg sent on last).  A jump of 0 (nothing sent since) needs no SWITCH.
        """
        current = self.current
        if current is leg:
            return 0
        self.current = leg
        # (The current leg has the highest count; the maximum stays right even if the
        # leg we last sent on is gone.)
        top = max(x.last_seq_sent for x in self.legs)
        relative = top - leg.last_seq_sent
        leg.last_seq_sent = top
        if relative:
            self.switches_sent += 1
        return relative

    @staticmethod
    def note_sent(leg: ConfluxLeg, cells: int) -> None:
        leg.last_seq_sent += cells
        leg.cells_sent += cells

    # -- teardown ------------------------------------------------------------------------

    def leg_closed(self, circuit: Circuit, message: str) -> None:
        """A leg's circuit closed.  Once streams may use the set, that ends it all."""
        leg = circuit.conflux_leg
        if leg is None or leg.state is LegState.CLOSED:
            return
        leg.state = LegState.CLOSED
        if not self.finalized or self.closed:
            return
        self.closed = True
        for each in self.legs:
            each.held.clear()  # nothing will be delivered any more
        self.queued_cells = 0
        self._count_bytes(-self.queued_bytes)
        for other in self.legs:
            if other is not leg and other.state is not LegState.CLOSED:
                other.circuit.destroy(0, f"another conflux leg closed: {message}")

    def stats(self) -> dict[str, object]:
        """Counters for logs and tests."""
        return {
            "legs": len(self.legs),
            "delivered": self.delivered,
            "max_queued_cells": self.max_queued_seen,
            "switches_sent": self.switches_sent,
            "switches_received": sum(leg.switches_received for leg in self.legs),
            "cells_received": [leg.cells_received for leg in self.legs],
            "cells_sent": [leg.cells_sent for leg in self.legs],
        }
